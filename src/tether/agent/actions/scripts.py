"""`script.run`: an investigation script in a child process, its output streamed as it runs."""

from typing import Any, Literal

from tether.agent.context import job_context
from tether.agent.errors import ActionError
from tether.agent.script_files import ScriptFiles
from tether.agent.scripts import ScriptLimits, ScriptServices, run_script
from tether.protocol import ScriptRunArgs, ScriptRunResult

# The job's own time limit (enforced by the job runner, which cancels the run and so kills the
# script's process tree) governs; the runner's limit is only a backstop far beyond any job's.
_BACKSTOP_SECONDS = 8 * 24 * 3600.0


class AgentScriptServices:
    """What a script may ask of its agent beyond params, rows and logs."""

    def __init__(self, services: ScriptServices | None = None) -> None:
        self._services = services

    async def upload(self, path: str) -> dict[str, Any]:
        if self._services is None:
            raise ActionError("This agent has no file transfer channel to the platform.")
        return await self._services.upload(path)

    async def download(self, name: str, dest: str) -> dict[str, Any]:
        if self._services is None:
            raise ActionError("This agent has no file transfer channel to the platform.")
        return await self._services.download(name, dest)


async def run(args: ScriptRunArgs, services: ScriptServices | None = None) -> ScriptRunResult:
    """Run the script; a syntax error or a non-zero exit fails the job with one sentence."""
    context = job_context()
    if services is None and context.transfers is not None:
        services = ScriptFiles(context.job_id, context.transfers)

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
        services=AgentScriptServices(services),
        cancel=context.cancel,
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
