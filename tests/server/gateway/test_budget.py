"""The per-connection budget: what an agent's frames, bytes and CPU time cost it."""

from websockets.frames import Frame, Opcode

from tether.server.gateway.budget import BudgetLimits, FrameBudget
from tether.server.gateway.metering import over_budget_reason


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


LIMITS = BudgetLimits(
    frames_per_second=100,
    frame_burst=1000,
    control_frames_per_second=2,
    control_frame_burst=60,
    bytes_per_second=1000,
    byte_burst=10_000,
    cpu_per_second=0.25,
    cpu_burst=3.0,
)


def test_an_honest_agents_pings_stay_within_the_control_budget() -> None:
    clock = Clock()
    budget = FrameBudget(LIMITS, clock=clock)
    for _ in range(1000):  # one ping every 2 s for half an hour and more
        budget.charge_frame(Frame(Opcode.PING, b"keepalive"))
        clock.now += 2
    assert budget.exceeded is None
    assert budget.control_frames == 1000


def test_a_ping_flood_runs_the_control_budget_dry_after_its_burst() -> None:
    budget = FrameBudget(LIMITS, clock=Clock())
    for _ in range(60):
        budget.charge_frame(Frame(Opcode.PING, b""))
    assert budget.exceeded is None
    budget.charge_frame(Frame(Opcode.PONG, b""))  # unsolicited pongs cost the same
    assert budget.exceeded == "control frames"


def test_data_frames_cost_the_frame_budget_not_the_control_one() -> None:
    budget = FrameBudget(LIMITS, clock=Clock())
    for _ in range(1000):
        budget.charge_frame(Frame(Opcode.TEXT, b"{}"))
    assert budget.exceeded is None
    budget.charge_frame(Frame(Opcode.BINARY, b"x"))
    assert budget.exceeded == "frames"
    assert budget.control_frames == 0


def test_bytes_and_cpu_time_have_budgets_of_their_own() -> None:
    clock = Clock()
    budget = FrameBudget(LIMITS, clock=clock)
    budget.charge_bytes(10_000, 0.0)
    assert budget.exceeded is None
    budget.charge_bytes(1, 0.0)
    assert budget.exceeded == "bytes"

    busy = FrameBudget(LIMITS, clock=clock)
    for _ in range(29):
        busy.charge_bytes(1, 0.1)
    clock.now += 1  # a quarter second of CPU comes back per second
    for _ in range(3):
        busy.charge_bytes(1, 0.1)
    assert busy.exceeded is None
    busy.charge_bytes(1, 0.1)
    assert busy.exceeded == "CPU time"
    assert busy.spent() == {"frames": 0, "control_frames": 0, "bytes": 33, "cpu_ms": 3300.0}


def test_the_first_budget_to_run_dry_is_the_one_named() -> None:
    budget = FrameBudget(LIMITS, clock=Clock())
    for _ in range(61):
        budget.charge_frame(Frame(Opcode.PING, b""))
    budget.charge_bytes(20_000, 0.0)
    assert budget.exceeded == "control frames"


def test_the_close_reason_names_the_budget_and_the_wait_and_fits_a_close_frame() -> None:
    reason = over_budget_reason("control frames", 60)
    assert reason == (
        "This host sent more control frames than its budget allows. Reconnect after 60 s."
    )
    assert len(reason.encode()) <= 123
