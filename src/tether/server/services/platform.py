"""The platform's services wired together once, from the settings, for one process."""

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.action_names import AGENT_UPGRADE, FILES_GET, FILES_PUT
from tether.server.config import Settings
from tether.server.services.access import ResponseAccess
from tether.server.services.access_settings import AccessSettingsStore
from tether.server.services.admission import Admission
from tether.server.services.agent_addresses import AgentAddresses
from tether.server.services.agent_packages import AgentPackages, BundlePackager
from tether.server.services.approvals import Approvals
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.bindings import ResultBindings
from tether.server.services.bus import Bus
from tether.server.services.buses.local import LocalBus
from tether.server.services.checkpoint_sink import CheckpointWitnesses, build_witnesses
from tether.server.services.dispatch import Dispatcher
from tether.server.services.endpoint_misbehaviour import EndpointMisbehaviour
from tether.server.services.enrollment import Enrollment
from tether.server.services.file_transfers import FileTransfers
from tether.server.services.files import FileLibrary
from tether.server.services.hosts import Hosts
from tether.server.services.isolation import Isolation
from tether.server.services.job_events import JobEvents
from tether.server.services.jobs import Jobs
from tether.server.services.live_sessions import LiveSessions
from tether.server.services.mfa import load_sealer
from tether.server.services.nodes import Nodes
from tether.server.services.pki import CertificateAuthority
from tether.server.services.policy import PolicyDelivery
from tether.server.services.presence import Presence
from tether.server.services.reachability import Reachability
from tether.server.services.refusal_summary import RefusalSummary
from tether.server.services.script_files import ScriptFiles
from tether.server.services.scripts import ScriptLibrary
from tether.server.services.segments import Segments
from tether.server.services.server_certificate import CertificateWatch, load_certificate
from tether.server.services.service_tokens import ServiceTokens
from tether.server.services.session_cache import SessionCache
from tether.server.services.step_up import StepUp
from tether.server.services.team import Team
from tether.server.services.transfer_progress import TransferProgress
from tether.server.services.upgrade_key import UpgradeSigner
from tether.server.services.upgrades import RESERVED as UPGRADE_RESERVED
from tether.server.services.upgrades import Upgrades
from tether.server.services.user_sessions import UserSessions
from tether.server.services.users import SessionPolicy, Users
from tether.server.store.blobs import BlobStore
from tether.server.store.db import create_engine
from tether.server.store.faults import FaultCounter

# The audit action of the per-source summary of TLS handshakes refused on the agent port.
TLS_REFUSALS = "agent.tls_refused"


def session_policy(settings: Settings) -> SessionPolicy:
    return SessionPolicy(
        idle=timedelta(minutes=settings.session_idle_minutes),
        lifetime=timedelta(hours=settings.session_lifetime_hours),
    )


@dataclass
class Platform:
    """Everything a request handler or the gateway may call."""

    settings: Settings
    engine: AsyncEngine
    ca: CertificateAuthority
    audit: AuditLog
    users: Users
    service_tokens: ServiceTokens
    team: Team
    step_up: StepUp
    user_sessions: UserSessions
    access_settings: AccessSettingsStore
    enrollment: Enrollment
    presence: Presence
    hosts: Hosts
    reachability: Reachability
    policies: PolicyDelivery
    segments: Segments
    access: ResponseAccess
    dispatcher: Dispatcher
    jobs: Jobs
    approvals: Approvals
    scripts: ScriptLibrary
    live_sessions: LiveSessions
    files: FileLibrary
    transfers: FileTransfers
    isolation: Isolation
    bindings: ResultBindings
    faults: FaultCounter
    # Where each signed audit checkpoint is sent off the host (started by the runner).
    witnesses: CheckpointWitnesses
    # TLS handshakes refused on the agent port, one audit record per source per minute.
    tls_refusals: RefusalSummary
    # The server certificate being served: /metrics and the log watch its end.
    certificate: CertificateWatch
    # What enrolled endpoints claimed about jobs not their own, recorded per host per minute.
    misbehaviour: EndpointMisbehaviour
    # Wake-ups to the process holding an agent's connection (docs/adr/0044).
    bus: Bus
    # Agent packages built for admins and served on the analyst port (docs/adr/0052).
    agent_packages: AgentPackages
    # Signed agent upgrades rolled out a few hosts at a time (docs/adr/0051).
    upgrades: Upgrades
    # The platform's agent ports handed to agents (docs/adr/0049).
    agent_addresses: AgentAddresses
    # Agent connections in their handshake, and those shed (docs/adr/0049).
    admission: Admission = field(default_factory=Admission)
    # This process's row among the platform's processes (split roles only).
    nodes: Nodes | None = None

    @classmethod
    def build(
        cls, settings: Settings, engine: AsyncEngine | None = None, bus: Bus | None = None
    ) -> "Platform":
        """The services of one process of `settings.role`; `bus` is given for a split role
        (the runner makes a RedisBus), else the process talks to itself."""
        engine = engine or create_engine(settings.db_url)
        role = settings.role
        bus = bus or LocalBus()
        blobs = BlobStore(
            settings.file_store,
            max_bytes=settings.max_file_bytes,
            several_nodes=settings.several_nodes,
        )
        # One of several processes (a split role, or role all among several nodes, ADR 0050).
        nodes = (
            Nodes(
                engine,
                role.value,
                name=settings.node_label,
                file_store=blobs.identity(),
            )
            if settings.several_nodes
            else None
        )
        ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
        signer = CheckpointSigner(
            settings.audit_key, settings.audit_anchor, writer=nodes.id if nodes else None
        )
        witnesses = build_witnesses(settings, signer)
        audit = AuditLog(engine, signer, group_limit=settings.audit_group_records)
        addresses = AgentAddresses(engine, audit, settings.agent_url)
        bindings = ResultBindings(engine, audit)
        # `tether audit verify` also checks that stored results still match their records.
        audit.add_check(bindings.check_all)
        # A node holding agents among several writes which node holds each host; all read it.
        presence = Presence(
            engine,
            node_id=nodes.id if nodes and role.holds_agents else None,
            node_name=nodes.name if nodes and role.holds_agents else None,
        )
        policies = PolicyDelivery(engine, presence, bus=bus)
        users = Users(
            engine,
            audit,
            session_policy(settings),
            sealer=load_sealer(settings.mfa_key),
            cache=SessionCache(settings.session_cache_seconds),
            bus=bus,
        )
        team = Team(engine, audit, users)
        access = ResponseAccess(engine)
        events = JobEvents(bus if bus.spans_processes else None)
        transfers = FileTransfers(
            blobs, max_file_bytes=settings.max_file_bytes, progress=TransferProgress(engine)
        )
        files = FileLibrary(
            engine, audit, blobs, transfers.verified, transfers.verified_for, transfers.delivery
        )
        faults = FaultCounter()
        misbehaviour = EndpointMisbehaviour(audit)
        dispatcher = Dispatcher(
            engine,
            audit,
            presence,
            access,
            events,
            transfers=transfers,
            faults=faults,
            misbehaviour=misbehaviour,
            bus=bus,
        )
        hosts = Hosts(engine, audit, presence, misbehaviour, bus=bus)
        reachability = Reachability(presence, audit, holds_agents=role.holds_agents, bus=bus)
        if role.holds_agents:
            reachability.serve_agents(bus)
            # Which process acts on each wake-up: the one holding the agents' connections.
            dispatcher.serve_agents(bus)
            policies.serve_agents(bus)
            hosts.serve_agents(bus)
        dispatcher.on_finished(transfers.job_finished)
        dispatcher.on_finished(files.job_finished)
        dispatcher.check_result(FILES_GET, files.retrieval_problem)
        dispatcher.check_result(FILES_PUT, files.deploy_problem)
        dispatcher.on_ending_commit(files.record_in_commit)
        script_files = ScriptFiles(engine, audit, transfers, files, misbehaviour)
        transfers.on_request_handler = script_files.on_request
        dispatcher.on_finished(script_files.job_finished)
        jobs = Jobs(engine, audit, access, dispatcher, events)
        jobs.check_arguments(FILES_PUT, files.check_put)
        # Only the upgrade service sends agent.upgrade: it signs what it sends.
        jobs.reserve(AGENT_UPGRADE, UPGRADE_RESERVED)
        upgrades = Upgrades(engine, audit, jobs, files, UpgradeSigner(settings.upgrade_key))
        dispatcher.on_finished(upgrades.job_finished)
        isolation = Isolation(engine, audit, jobs, policies)
        live_sessions = LiveSessions(
            engine,
            audit,
            access,
            jobs,
            idle=timedelta(minutes=settings.live_session_idle_minutes),
        )
        # Disabling a user or taking their Active Response role ends their live sessions at once.
        users.on_access_lost(live_sessions.end_for_user)
        # ...and withdraws the response jobs they queued, so none runs after they lost access.
        users.on_access_lost(jobs.withdraw_for_user)
        service_tokens = ServiceTokens(engine, audit, jobs.withdraw_for_user)
        approvals = Approvals(engine, audit, dispatcher, events)
        # The job sweeper also ends requests for approval nobody decided in time.
        dispatcher.on_sweep(approvals.expire_overdue)
        enrollment = Enrollment(
            engine, audit, ca, settings.analyst_url, settings.agent_url, addresses
        )
        server_cert = load_certificate(settings.server_cert)
        agent_packages = AgentPackages(
            engine,
            audit,
            enrollment,
            directory=settings.data_dir / "packages",
            analyst_url=settings.analyst_url,
            ca_pem=ca.pem.decode(),
            server_cert=server_cert,
            builder=BundlePackager(),
        )
        return cls(
            settings=settings,
            service_tokens=service_tokens,
            engine=engine,
            ca=ca,
            audit=audit,
            users=users,
            team=team,
            step_up=StepUp(engine, audit, users.mfa, users.now, on_change=users.forget_user),
            user_sessions=UserSessions(engine, audit, users.now, on_change=users.forget_user),
            access_settings=AccessSettingsStore(
                engine, audit, team.end_external_access, on_change=users.forget_everyone
            ),
            enrollment=enrollment,
            agent_addresses=addresses,
            presence=presence,
            hosts=hosts,
            reachability=reachability,
            policies=policies,
            segments=Segments(engine, audit, policies),
            access=access,
            dispatcher=dispatcher,
            scripts=ScriptLibrary(engine, audit),
            jobs=jobs,
            approvals=approvals,
            live_sessions=live_sessions,
            files=files,
            transfers=transfers,
            isolation=isolation,
            bindings=bindings,
            faults=faults,
            witnesses=witnesses,
            tls_refusals=RefusalSummary(audit, TLS_REFUSALS),
            certificate=CertificateWatch(server_cert),
            misbehaviour=misbehaviour,
            bus=bus,
            agent_packages=agent_packages,
            upgrades=upgrades,
            admission=Admission(limit=settings.agent_handshake_limit),
            nodes=nodes,
        )

    async def close(self) -> None:
        # The last minute's refusals: written now, or lost with the process.
        for summary in (self.users.login_failures, self.tls_refusals):
            await summary.flush(everything=True)
        await self.misbehaviour.close()
        await self.transfers.close()
        await self.presence.flush()
        await self.witnesses.close()
        await self.bus.close()
        await self.engine.dispose()
        self.audit.signer.close()
