"""`script.run`: an investigation script in a child process, its output streamed as it runs."""

from typing import Any, Literal

from tether.agent.context import job_context
from tether.agent.errors import ActionError
from tether.agent.isolation import Isolator
from tether.agent.script_files import ScriptFiles
from tether.agent.scripts import ScriptLimits, ScriptServices, run_script
from tether.protocol import ScriptRunArgs, ScriptRunResult
from tether.protocol.isolation import IsolationMode

# The job's own time limit (enforced by the job runner, which cancels the run and so kills the
# script's process tree) governs; the runner's limit is only a backstop far beyond any job's.
_BACKSTOP_SECONDS = 8 * 24 * 3600.0


class AgentScriptServices:
    """What a script may ask of its agent beyond params, rows and logs: files through the
    platform (tether.agent.script_files) and the endpoint's isolation."""

    def __init__(self, job_id: str, files: ScriptFiles | None, isolator: Isolator | None) -> None:
        self._job_id = job_id
        self._files = files
        self._isolator = isolator

    async def upload(self, path: str) -> dict[str, Any]:
        if self._files is None:
            raise ActionError("This agent has no file transfer channel to the platform.")
        return await self._files.upload(path)

    async def download(self, name: str, dest: str) -> dict[str, Any]:
        if self._files is None:
            raise ActionError("This agent has no file transfer channel to the platform.")
        return await self._files.download(name, dest)

    def _isolation(self) -> Isolator:
        if self._isolator is None:
            raise ActionError("Isolation is not available in this agent.")
        return self._isolator

    async def isolate(self, mode: str) -> dict[str, Any]:
        try:
            chosen = IsolationMode(mode)
        except ValueError:
            raise ActionError("The isolation mode is 'outbound' or 'full'.") from None
        isolator = self._isolation()
        # The platform's allowlist, as its latest policy said (an isolation job brings its own).
        status = await isolator.isolate(
            chosen, isolator.default_allow, cause="script", job_id=self._job_id
        )
        return status.model_dump(mode="json")

    async def unisolate(self) -> dict[str, Any]:
        status = await self._isolation().release(cause="script", job_id=self._job_id)
        return status.model_dump(mode="json")

    async def isolation_status(self) -> dict[str, Any]:
        return (await self._isolation().status()).model_dump(mode="json")


async def run(args: ScriptRunArgs, services: ScriptServices | None = None) -> ScriptRunResult:
    """Run the script; a syntax error or a non-zero exit fails the job with one sentence."""
    context = job_context()
    if services is None:
        files = (
            ScriptFiles(context.job_id, context.transfers)
            if context.transfers is not None
            else None
        )
        services = AgentScriptServices(context.job_id, files, context.isolator)

    async def on_output(stream: Literal["stdout", "stderr"], text: str) -> None:
        await context.output(stream, text)

    async def on_log(message: str) -> None:
        await context.output("log", message + "\n")

    outcome = await run_script(
        args.source,
        args.params,
        ScriptLimits(
            timeout_seconds=_BACKSTOP_SECONDS,
            max_output_bytes=args.max_output_bytes,
            max_rows=args.max_rows,
        ),
        on_output=on_output,
        on_row=context.row,
        on_log=on_log,
        services=services,
        cancel=context.cancel,
        recorder=context.processes,
    )
    if outcome.cancelled:
        # The job runner reports the job cancelled: the analyst asked for it.
        raise ActionError(outcome.error or "The script was cancelled.")
    if outcome.exit_code != 0:
        raise ActionError(outcome.error or f"The script exited with status {outcome.exit_code}.")
    return ScriptRunResult(
        exit_code=outcome.exit_code,
        timed_out=outcome.timed_out,
        cancelled=outcome.cancelled,
        output_truncated=outcome.output_truncated,
        rows_truncated=outcome.rows_truncated,
        error=outcome.error,
    )
