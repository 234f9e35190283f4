"""The device's OTA job runner, owned by the agent (or by a lightweight runner in load tests).

    boot = prepare_boot(data_dir, factory_version, settings)   # before the link announces fw_version
    client = OtaClient(..., boot=boot)
    agent.on_downlink("ota", client.on_downlink); task: client.run()

`run()` first finishes what the boot started (health check of a trial slot: commit or roll back), then
carries out the latest retained job: queued -> (deferred) -> downloading -> verifying -> installing ->
rebooting (the client asks its owner to restart it; the boot record decides what runs next) ->
health_check -> succeeded | rolled_back. Each state is reported through `emit` (the agent's outbox).
A cancel stops a job that has not started installing; after that the install runs to its end.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import msgspec

from contract.errors import ContractError
from contract.messages import OtaReport, OtaState
from contract.ota import FirmwareManifest, OtaAction, OtaJob, decode_job, refusal, verify_manifest
from contract.signing import SignatureError, TrustStore
from edge.clock import Clock
from edge.ota import planner
from edge.ota.installer import DownloadError, download, verify_artifact
from edge.ota.planner import BootAction, BootState, OtaSettings, Resume
from edge.ota.slots import Slots

log = logging.getLogger(__name__)
HealthCheck = Callable[[], Awaitable[str | None]]  # None = healthy, else why not
_CANCELLABLE = {OtaState.QUEUED, OtaState.DEFERRED, OtaState.DOWNLOADING, OtaState.VERIFYING}


@dataclass(frozen=True, slots=True)
class Boot:
    state: BootState
    action: BootAction
    running_version: str
    previous_version: str  # what the device ran before this trial (or the same as running)


def prepare_boot(data_dir: Path, factory_version: str, settings: OtaSettings) -> Boot:
    """Decide and record what this start runs (call once per start, before connecting)."""
    slots = Slots(data_dir)
    before = slots.load()
    state, action = planner.on_boot(before, settings.max_boot_attempts)
    if state != before:
        slots.save(state)
    return Boot(
        state,
        action,
        state.version_of(state.running, factory_version),
        state.version_of(state.active, factory_version),
    )


class _Finished(Exception):
    def __init__(self, state: OtaState, reason: str = "", retryable: bool = False) -> None:
        super().__init__(reason)
        self.state, self.reason, self.retryable = state, reason, retryable


class OtaClient:
    def __init__(
        self,
        *,
        device_id: str,
        data_dir: Path,
        model: str,
        hw_rev: str,
        boot: Boot,
        trust: TrustStore | None,
        clock: Clock,
        emit: Callable[[OtaReport], None],
        connected: asyncio.Event,
        request_restart: Callable[[], None],
        session_running: Callable[[], bool] = lambda: False,
        battery: Callable[[], float | None] = lambda: None,
        health_check: HealthCheck | None = None,
        settings: OtaSettings | None = None,
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.device_id, self.model, self.hw_rev = device_id, model, hw_rev
        self.slots = Slots(data_dir)
        self.boot = boot
        self.trust = trust
        self.clock = clock
        self._emit = emit
        self._connected = connected
        self._request_restart = request_restart
        self._session_running = session_running
        self.battery = battery
        self.health_check = health_check
        self.settings = settings or OtaSettings()
        self._http = http
        self._rng = rng or random.Random()
        self._latest: OtaJob | None = None
        self._wake = asyncio.Event()
        self._current: tuple[str, asyncio.Task[None]] | None = None
        self.state: OtaState | None = None  # of the current job
        self.restart_requested = False

    # -- inputs --------------------------------------------------------------------------------------
    async def on_downlink(self, topic: str, payload: bytes) -> None:
        if not payload:  # the retained job was cleared
            return
        try:
            job = decode_job(topic, payload)
        except ContractError as exc:
            log.warning("%s: OTA job refused: %s", self.device_id, exc)
            return
        current = self._current
        if job.action is OtaAction.CANCEL and current is not None and current[0] == job.job_id:
            if self.state in _CANCELLABLE:
                current[1].cancel()
            else:
                log.info("%s: cancel of %s refused: already %s", self.device_id, job.job_id, self.state)
            return
        self._latest = job
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self._finish_boot()
        while True:
            await self._wake.wait()
            self._wake.clear()
            job, self._latest = self._latest, None
            if job is not None and not self.restart_requested:
                await self._run_job(job)

    async def _run_job(self, job: OtaJob) -> None:
        finished = self.slots.finished()
        if job.action is OtaAction.CANCEL:
            if job.job_id not in finished:  # never started here: confirm, so the cloud can move on
                self.slots.finish(job.job_id)
                self._report(
                    job.job_id, job.rollout_id, OtaState.CANCELLED, reason="cancelled before it started"
                )
            return
        task = asyncio.create_task(self._install(job), name=f"ota:{self.device_id}:{job.job_id}")
        self._current = (job.job_id, task)
        try:
            await asyncio.wait({task})
        finally:
            self._current = None
        if task.cancelled():
            self.slots.finish(job.job_id)
            self._report(job.job_id, job.rollout_id, OtaState.CANCELLED, reason="cancelled by the operator")
        elif task.exception() is not None:
            log.error("%s: OTA job %s crashed", self.device_id, job.job_id, exc_info=task.exception())
            self.slots.finish(job.job_id)
            self._report(
                job.job_id, job.rollout_id, OtaState.FAILED, reason=f"internal error: {task.exception()!r}"
            )

    # -- one install ---------------------------------------------------------------------------------
    async def _install(self, job: OtaJob) -> None:
        slots = self.slots
        resume = planner.resume_point(
            job.job_id, slots.load(), slots.finished(), slots.stage(job.job_id), slots.part_bytes(job.job_id)
        )
        if resume in (Resume.FINISHED, Resume.AWAIT_BOOT):
            return
        target = ""
        try:
            manifest = self._admit(job)
            target = manifest.version
            if resume is Resume.FRESH:
                self._report(job.job_id, job.rollout_id, OtaState.QUEUED, target)
            await self._wait_conditions(job, manifest)
            if resume is not Resume.INSTALL:
                await self._download(job, manifest)
            self._report(job.job_id, job.rollout_id, OtaState.VERIFYING, target)
            slots.set_stage(job.job_id, "verifying")
            part = slots.part_path(job.job_id)
            why = await asyncio.to_thread(verify_artifact, part, manifest)
            if why is not None:
                part.unlink(missing_ok=True)
                raise _Finished(OtaState.FAILED, why, False)
            self._report(job.job_id, job.rollout_id, OtaState.INSTALLING, target)
            slots.set_stage(job.job_id, "installing")
            boot = slots.load()
            slot = boot.inactive
            assert job.manifest is not None
            await asyncio.to_thread(slots.write_slot, slot, part, msgspec.json.encode(job.manifest))
            slots.save(
                planner.staged(
                    boot, slot, manifest.version, manifest.version_code, job.job_id, job.rollout_id
                )
            )
            slots.part_path(job.job_id).unlink(missing_ok=True)
        except _Finished as done:
            slots.finish(job.job_id)
            self._report(
                job.job_id, job.rollout_id, done.state, target, reason=done.reason, retryable=done.retryable
            )
            return
        self._report(job.job_id, job.rollout_id, OtaState.REBOOTING, target)
        self._restart()

    def _admit(self, job: OtaJob) -> FirmwareManifest:
        if job.manifest is None:
            raise _Finished(OtaState.FAILED, "install job without a manifest")
        if self.trust is None:
            raise _Finished(
                OtaState.FAILED, "no trusted keys on the device: set MICROFLEET_EDGE_TRUSTED_KEYS", False
            )
        try:
            manifest = verify_manifest(job.manifest, self.trust, self.clock.now())
        except SignatureError as exc:
            raise _Finished(OtaState.FAILED, f"manifest refused: {exc.detail}", False) from None
        why = refusal(manifest, model=self.model, hw_rev=self.hw_rev, floor_code=self.slots.load().floor)
        if why is not None:
            raise _Finished(OtaState.FAILED, why, False)
        return manifest

    async def _wait_conditions(self, job: OtaJob, manifest: FirmwareManifest) -> None:
        deadline = job.deadline or (self.clock.now() + timedelta(seconds=self.settings.default_deadline_s))
        last = None
        while (why := self._defer_reason(manifest)) is not None:
            if self.clock.now() >= deadline:
                raise _Finished(OtaState.FAILED, f"deadline passed while deferred: {why}", True)
            if why != last:
                self._report(job.job_id, job.rollout_id, OtaState.DEFERRED, manifest.version, reason=why)
                last = why
            await self.clock.sleep(self.settings.defer_check_s)

    def _defer_reason(self, manifest: FirmwareManifest) -> str | None:
        return planner.defer_reason(
            session_running=self._session_running(),
            battery_pct=self.battery(),
            min_battery_pct=manifest.min_battery_pct,
        )

    async def _download(self, job: OtaJob, manifest: FirmwareManifest) -> None:
        if self._http is not None:
            await self._download_with(self._http, job, manifest)
            return
        # An HTTP client (and its TLS context, ~0.9 MB of native memory) only while a download runs: an
        # agent waits for jobs for months, and a simulator process holds thousands of agents.
        s = self.settings
        timeout = httpx.Timeout(s.stall_timeout_s, connect=s.connect_timeout_s)
        async with httpx.AsyncClient(timeout=timeout) as http:
            await self._download_with(http, job, manifest)

    async def _download_with(self, http: httpx.AsyncClient, job: OtaJob, manifest: FirmwareManifest) -> None:
        part = self.slots.part_path(job.job_id)
        self.slots.set_stage(job.job_id, "downloading")
        last = [-1.0]

        def progress(have: int) -> None:
            fraction = min(1.0, have / manifest.size)
            if planner.progress_due(last[0], fraction, self.settings.progress_step):
                last[0] = fraction
                self._report(
                    job.job_id, job.rollout_id, OtaState.DOWNLOADING, manifest.version, progress=fraction
                )

        progress(part.stat().st_size if part.exists() else 0)
        attempt = 0
        while True:
            attempt += 1
            try:
                await download(http, job.url, part, manifest.size, progress)
                return
            except DownloadError as exc:
                if not planner.may_retry(attempt, exc.retryable, self.settings):
                    raise _Finished(
                        OtaState.FAILED,
                        f"download failed after {attempt} attempts: {exc.reason}",
                        exc.retryable,
                    ) from None
                delay = planner.retry_delay(attempt, self.settings, self._rng.random())
                log.info("%s: %s; retry %d in %.1fs", self.device_id, exc.reason, attempt, delay)
                await self.clock.sleep(delay)

    # -- after a restart -----------------------------------------------------------------------------
    async def _finish_boot(self) -> None:
        b = self.boot
        if b.action is BootAction.ROLLED_BACK:
            self.slots.finish(b.state.job_id)
            self._report(
                b.state.job_id,
                b.state.rollout_id,
                OtaState.ROLLED_BACK,
                reason=f"the new firmware did not pass its health check within {self.settings.max_boot_attempts} boots",
            )
        elif b.action is BootAction.HEALTH_CHECK:
            job_id, rollout_id = b.state.job_id, b.state.rollout_id
            self._report(job_id, rollout_id, OtaState.HEALTH_CHECK, b.running_version)
            why = await self._health()
            if why is None:
                self.slots.save(planner.committed(self.slots.load()))
                self.slots.finish(job_id)
                self._report(job_id, rollout_id, OtaState.SUCCEEDED, b.running_version)
            else:
                self.slots.save(planner.rolled_back(self.slots.load()))
                self.slots.finish(job_id)
                self.boot = Boot(self.slots.load(), BootAction.NORMAL, b.previous_version, b.previous_version)
                self._report(job_id, rollout_id, OtaState.ROLLED_BACK, b.running_version, reason=why)
                self._restart()

    async def _health(self) -> str | None:
        timeout = self.settings.health_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return f"health check: no connection to the broker within {timeout:.0f}s"
        if self.health_check is None:
            return None
        try:
            async with asyncio.timeout(timeout):
                why = await self.health_check()
        except TimeoutError:
            return f"health check: the device check did not answer within {timeout:.0f}s"
        return None if why is None else f"health check failed: {why}"

    # -- output --------------------------------------------------------------------------------------
    def _restart(self) -> None:
        self.restart_requested = True
        self._request_restart()

    def _report(
        self,
        job_id: str,
        rollout_id: int,
        state: OtaState,
        target: str = "",
        *,
        reason: str = "",
        retryable: bool = False,
        progress: float | None = None,
    ) -> None:
        self.state = state
        now = self.clock.now()
        self._emit(
            OtaReport(
                device_id=self.device_id,
                seq=0,
                ts=now,
                job_id=job_id or "unknown",
                rollout_id=rollout_id,
                state=state,
                fw_version=self.boot.running_version,
                target_version=target,
                progress=progress,
                reason=reason[:200],
                retryable=retryable,
            )
        )


def load_trust(path: Path | None) -> TrustStore | None:
    """The device's trust store: a JSON list of TrustedKey objects (`microfleet keys generate` prints one)."""
    if path is None:
        return None
    from contract.signing import TrustedKey

    raw = path.read_bytes()
    try:
        keys = msgspec.json.decode(raw, type=list[TrustedKey])
    except msgspec.ValidationError:
        keys = [msgspec.json.decode(raw, type=TrustedKey)]
    return TrustStore(keys)
