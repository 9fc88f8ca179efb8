"""What /metrics shows about the platform's access: certificate expiry, refusals (ADR 0026/0027)."""

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tether.server.services.admission import Admission
from tether.server.services.platform import Platform


class _ReasonCounter(Collector):
    """A counter by reason read from a RefusalSummary's totals (its reasons are a bounded set)."""

    def __init__(self, name: str, documentation: str, totals: Callable[[], Counter[str]]) -> None:
        self._name = name
        self._documentation = documentation
        self._totals = totals

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=["reason"])
        for reason, count in sorted(self._totals().items()):
            family.add_metric([reason], count)
        yield family


class _AdmissionCollector(Collector):
    """Agent connections shed by admission control, and those in their handshake now."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        shed = CounterMetricFamily(
            "tether_agent_connections_shed",
            "Agent connections closed before their TLS handshake by this process because too "
            "many handshakes were in flight (docs/adr/0049)",
        )
        shed.add_metric([], self._admission.shed)
        yield shed
        in_flight = GaugeMetricFamily(
            "tether_agent_handshakes_in_flight",
            "Agent connections in their TLS handshake or WebSocket upgrade in this process",
        )
        in_flight.add_metric([], self._admission.in_flight)
        yield in_flight


def register_access_metrics(registry: CollectorRegistry, platform: Platform) -> None:
    """The certificate's remaining life and the refusals of unauthenticated clients."""
    Gauge(
        "tether_server_certificate_expiry_seconds",
        "Seconds until the served server certificate expires (negative once it has)",
        registry=registry,
    ).set_function(platform.certificate.seconds_left)
    registry.register(
        _ReasonCounter(
            "tether_login_failures",
            "Failed and throttled login attempts in this process, by reason",
            lambda: platform.users.login_failures.totals,
        )
    )
    registry.register(_AdmissionCollector(platform.admission))
    registry.register(
        _ReasonCounter(
            "tether_agent_tls_refusals",
            "TLS handshakes refused on the agent port by this process, by reason",
            lambda: platform.tls_refusals.totals,
        )
    )
