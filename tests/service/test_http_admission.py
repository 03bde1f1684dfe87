"""The HTTP port's admission in-process: at most ``limit`` requests past it at once, the rest waiting before
their route runs; health probes never wait, and the unrestricted ones never reach the router."""

from __future__ import annotations

import asyncio

from service.protocol.health import HealthState
from service.protocol.http_admission import Admission


class HeldApp:
    """An inner app whose requests are held until ``release`` is set; records what reached it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.active = 0
        self.most_active = 0
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        self.paths.append(scope["path"])
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if scope["path"].endswith("/infer"):
                await self.release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"inner"})
        finally:
            self.active -= 1


async def call(app, method: str, path: str) -> tuple[int, bytes]:
    sent = []

    async def send(message) -> None:
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_at_most_limit_requests_run_and_probes_answer_meanwhile():
    async def main():
        inner = HeldApp()
        app = Admission(inner, HealthState(), limit=2)
        infers = [asyncio.create_task(call(app, "POST", "/v2/models/m/infer")) for _ in range(5)]
        while app.waiting < 3:
            await asyncio.sleep(0)
        busy = (inner.active, app.waiting)
        live = await call(app, "GET", "/v2/health/live")
        model_ready = await call(app, "GET", "/v2/models/m/ready")  # skips the line, reaches the router
        inner.release.set()
        answers = await asyncio.gather(*infers)
        return busy, live, model_ready, answers, inner

    busy, live, model_ready, answers, inner = asyncio.run(main())
    assert busy == (2, 3)
    assert live == (200, b"")
    assert model_ready == (200, b"inner")
    assert answers == [(200, b"inner")] * 5 and inner.most_active == 3  # 2 infers + the model probe
    assert "/v2/health/live" not in inner.paths  # answered without the router


def test_probes_follow_the_health_state_and_restricted_ones_go_to_the_router():
    async def main():
        state = HealthState()
        inner = HeldApp()
        open_app = Admission(inner, state, limit=1)
        restricted = Admission(inner, state, limit=1, probes_restricted=True)
        return (
            await call(open_app, "GET", "/v2/health/ready"),
            await call(restricted, "GET", "/v2/health/ready"),
            inner.paths,
        )

    unrestricted, restricted, paths = asyncio.run(main())
    assert unrestricted[0] == 400  # nothing loaded: not ready
    assert restricted == (200, b"inner") and paths == ["/v2/health/ready"]

    async def ready_now():
        state = HealthState()
        state.set_ready(True)
        return await call(Admission(HeldApp(), state, limit=1), "GET", "/v2/health/ready")

    assert asyncio.run(ready_now()) == (200, b"")


def test_no_limit():
    async def main():
        inner = HeldApp()
        app = Admission(inner, HealthState(), limit=0)
        infers = [asyncio.create_task(call(app, "POST", "/v2/models/m/infer")) for _ in range(5)]
        while inner.active < 5:
            await asyncio.sleep(0)
        inner.release.set()
        await asyncio.gather(*infers)
        return inner.most_active

    assert asyncio.run(main()) == 5
