import pytest
from pydantic import BaseModel, ValidationError

from tether.protocol import (
    ACTIONS,
    TIERS,
    ActionSpec,
    FileHash,
    FileHashArgs,
    FileList,
    FileListArgs,
    NoopArgs,
    NoopResult,
    Permission,
    ProcessKillArgs,
    ProcessKillResult,
    ProcessList,
    ProcessListArgs,
    Tier,
    action,
)
from tether.protocol.actions import tier_additions


def test_every_declaration_is_filed_under_its_name() -> None:
    assert ACTIONS
    for name, spec in ACTIONS.items():
        assert spec.name == name
        assert spec.timeout_seconds > 0
        assert isinstance(spec.permission, Permission)
        assert spec.description


def test_argument_and_result_models_forbid_unknown_fields() -> None:
    for spec in ACTIONS.values():
        assert spec.args.model_config.get("extra") == "forbid", spec.name
        assert spec.result.model_config.get("extra") == "forbid", spec.name


def test_lookup() -> None:
    assert action("system.noop").args is NoopArgs
    with pytest.raises(KeyError):
        action("system.format_c")


def test_noop_args_are_bounded() -> None:
    with pytest.raises(ValidationError):
        NoopArgs(echo="x" * 257)


def test_noop_is_not_a_response_action_and_new_actions_are_unless_declared() -> None:
    assert action("system.noop").response is False
    declared = ActionSpec(
        name="files.get",
        args=NoopArgs,
        result=NoopResult,
        permission=Permission.ACTIVE_RESPONSE,
        timeout_seconds=1.0,
        description="x",
    )
    assert declared.response is True


@pytest.mark.parametrize(
    ("name", "args", "result"),
    [
        ("processes.list", ProcessListArgs, ProcessList),
        ("processes.kill", ProcessKillArgs, ProcessKillResult),
        ("files.list", FileListArgs, FileList),
        ("files.hash", FileHashArgs, FileHash),
    ],
)
def test_inspection_actions_are_response_actions(
    name: str, args: type[BaseModel], result: type[BaseModel]
) -> None:
    spec = action(name)
    assert (spec.args, spec.result) == (args, result)
    assert spec.response is True
    assert spec.permission is Permission.ACTIVE_RESPONSE


def test_argument_and_result_models_are_frozen() -> None:
    for spec in ACTIONS.values():
        assert spec.args.model_config.get("frozen") is True, spec.name
        assert spec.result.model_config.get("frozen") is True, spec.name


def test_tier_additions_file_every_response_action_under_the_tier_it_declares() -> None:
    added = tier_additions()
    assert list(added) == list(TIERS)
    for spec in ACTIONS.values():
        filed = [tier for tier, labels in added.items() if spec.label in labels]
        assert filed == ([spec.tier] if spec.response else []), spec.name
    assert "a library script" in added[Tier.RESPOND]
    assert added[Tier.SCRIPT] == ["an arbitrary script", "an agent upgrade"]
