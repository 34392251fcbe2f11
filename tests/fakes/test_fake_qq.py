"""FakeQQ driven by a small but real QQ Bot gateway client (aiohttp for REST, the websockets
library for the gateway), plus the remote-control API and the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from switchboard_testkit.fake_qq import (
    DEFAULT_APP_ID,
    DEFAULT_CLIENT_SECRET,
    INTENT_GROUP_AND_C2C,
    FakeQQ,
)

WAIT = 5.0  # upper bound of every wait
INTENTS = (1 << 30) | INTENT_GROUP_AND_C2C | (1 << 12)  # 1107300352, the project default
USER = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
GROUP = "0DEADBEEF0DEADBEEF0DEADBEEF0ABCD"


class Client:
    """What a gateway does, step by step, so each step can be asserted."""

    def __init__(self, fake: FakeQQ, http: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.http = http
        self.token = ""

    async def fetch_token(self) -> dict[str, Any]:
        async with self.http.post(
            f"{self.fake.base_url}/app/getAppAccessToken",
            json={"appId": DEFAULT_APP_ID, "clientSecret": DEFAULT_CLIENT_SECRET},
        ) as response:
            assert response.status == 200
            body = await response.json()
        self.token = body["access_token"]
        return body

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"QQBot {self.token}"}

    async def gateway_url(self) -> str:
        async with self.http.get(f"{self.fake.base_url}/gateway", headers=self.auth) as response:
            assert response.status == 200
            return (await response.json())["url"]

    async def connect(self) -> ClientConnection:
        # ping_interval=None: protocol pings are tested explicitly where they matter.
        return await connect(await self.gateway_url(), ping_interval=None, open_timeout=WAIT,
                             close_timeout=1)

    async def identify(self, ws: ClientConnection, intents: int = INTENTS) -> dict[str, Any]:
        hello = await recv(ws)
        assert hello["op"] == 10
        await send(ws, {"op": 2, "d": {"token": f"QQBot {self.token}", "intents": intents,
                                       "shard": [0, 1], "properties": {}}})
        ready = await recv(ws)
        assert ready["op"] == 0 and ready["t"] == "READY"
        return ready

    async def session(self, intents: int = INTENTS) -> tuple[ClientConnection, dict[str, Any]]:
        if not self.token:
            await self.fetch_token()
        ws = await self.connect()
        return ws, await self.identify(ws, intents)


async def recv(ws: ClientConnection, timeout: float = WAIT) -> dict[str, Any]:  # noqa: ASYNC109
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def send(ws: ClientConnection, payload: dict[str, Any]) -> None:
    await ws.send(json.dumps(payload))


async def closed_with(ws: ClientConnection) -> int | None:
    """Read until the server closes; the close code it sent (None: no close frame, a reset)."""
    with pytest.raises(ConnectionClosed) as caught:
        async with asyncio.timeout(WAIT):
            while True:
                await ws.recv()
    return caught.value.rcvd.code if caught.value.rcvd is not None else None


@pytest.fixture
async def fake() -> AsyncIterator[FakeQQ]:
    async with FakeQQ(heartbeat_interval_ms=30_000) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


@pytest.fixture
def client(fake: FakeQQ, http: aiohttp.ClientSession) -> Client:
    return Client(fake, http)


async def test_access_token(fake: FakeQQ, client: Client, http: aiohttp.ClientSession) -> None:
    body = await client.fetch_token()
    assert isinstance(body["expires_in"], str) and 7100 < int(body["expires_in"]) <= 7200
    assert (await client.fetch_token())["access_token"] == body["access_token"]  # reused
    url = f"{fake.base_url}/app/getAppAccessToken"
    async with http.post(url, json={"appId": DEFAULT_APP_ID, "clientSecret": "wrong"}) as r:
        assert r.status == 200 and (await r.json())["code"] == 100016  # no access_token
    async with http.post(url, json={"appId": "1", "clientSecret": DEFAULT_CLIENT_SECRET}) as r:
        assert r.status == 200 and "access_token" not in await r.json()
    fake.fail_token_next(2, status=503)
    for _ in range(2):
        async with http.post(url, json={"appId": DEFAULT_APP_ID,
                                        "clientSecret": DEFAULT_CLIENT_SECRET}) as r:
            assert r.status == 503
    await client.fetch_token()
    assert fake.calls["getAppAccessToken"] == 7


async def test_every_rest_answer_is_exactly_application_json(
    fake: FakeQQ, client: Client, http: aiohttp.ClientSession
) -> None:
    """qq-botpy parses a body as JSON only when Content-Type is exactly `application/json`
    (it could not log in while the fake sent `; charset=utf-8`)."""
    seen: list[str] = []
    token_url = f"{fake.base_url}/app/getAppAccessToken"
    creds = {"appId": DEFAULT_APP_ID, "clientSecret": DEFAULT_CLIENT_SECRET}
    fake.fail_token_next(1, status=503)
    for body in (creds, creds, {**creds, "clientSecret": "wrong"}):
        async with http.post(token_url, json=body) as r:
            seen.append(r.headers["Content-Type"])
    await client.fetch_token()
    for path, headers in (("/gateway", client.auth), ("/gateway/bot", client.auth),
                          ("/users/@me", client.auth),
                          ("/gateway", {"Authorization": "QQBot nope"})):
        async with http.get(f"{fake.base_url}{path}", headers=headers) as r:
            seen.append(r.headers["Content-Type"])
    assert seen == ["application/json"] * 7


async def test_tokens_expire(http: aiohttp.ClientSession) -> None:
    async with FakeQQ(token_ttl=1.0) as fake:
        client = Client(fake, http)
        first = await client.fetch_token()
        assert first["expires_in"] == "1"
        await client.gateway_url()
        await asyncio.sleep(1.1)  # the passing of time is what is under test
        async with http.get(f"{fake.base_url}/gateway", headers=client.auth) as response:
            assert response.status == 401
        assert (await client.fetch_token())["access_token"] != first["access_token"]
        await client.gateway_url()


async def test_gateway_requires_the_token(
    fake: FakeQQ, client: Client, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{fake.base_url}/gateway",
                        headers={"Authorization": "QQBot nope"}) as response:
        assert response.status == 401
        assert (await response.json())["code"] == 11244
    await client.fetch_token()
    assert await client.gateway_url() == f"ws://127.0.0.1:{fake.port}/websocket"
    async with http.get(f"{fake.base_url}/gateway/bot", headers=client.auth) as response:
        assert (await response.json())["shards"] == 1
    fake.expire_tokens()
    async with http.get(f"{fake.base_url}/gateway", headers=client.auth) as response:
        assert response.status == 401


async def test_hello_identify_heartbeat_and_dispatches(fake: FakeQQ, client: Client) -> None:
    await client.fetch_token()
    ws = await client.connect()
    hello = await recv(ws)
    assert hello == {"op": 10, "d": {"heartbeat_interval": 30_000}}
    await send(ws, {"op": 2, "d": {"token": f"QQBot {client.token}", "intents": INTENTS,
                                   "shard": [0, 1]}})
    ready = await recv(ws)
    assert ready["op"] == 0 and ready["t"] == "READY" and ready["s"] == 1
    assert ready["d"]["session_id"] == fake.current_session_id
    assert ready["d"]["user"]["bot"] is True
    await send(ws, {"op": 1, "d": 1})
    assert await recv(ws) == {"op": 11}
    assert fake.heartbeat_count == 1

    msg_id = fake.inject_message(USER, "hi there")
    event = await recv(ws)
    assert (event["op"], event["t"], event["s"]) == (0, "C2C_MESSAGE_CREATE", 2)
    assert event["d"]["id"] == msg_id and event["d"]["content"] == "hi there"
    assert event["d"]["author"]["user_openid"] == USER and event["d"]["timestamp"]

    fake.inject_message(USER, "in a group", group_openid=GROUP)
    event = await recv(ws)
    assert (event["t"], event["s"]) == ("GROUP_AT_MESSAGE_CREATE", 3)
    assert event["d"]["group_openid"] == GROUP
    assert event["d"]["author"]["member_openid"] == USER
    assert event["d"]["content"].strip() == "in a group"
    assert (fake.connection_count, fake.identify_count) == (1, 1)
    await ws.close()


async def test_events_need_the_intent(fake: FakeQQ, client: Client) -> None:
    ws, _ = await client.session(intents=1 << 30)
    assert fake.inject_event("C2C_MESSAGE_CREATE", {"content": "x"},
                             intent=INTENT_GROUP_AND_C2C) == 0
    assert fake.inject_event("AT_MESSAGE_CREATE", {"content": "y"}, intent=1 << 30) == 1
    assert (await recv(ws))["t"] == "AT_MESSAGE_CREATE"
    await ws.close()


async def test_bad_identify_closes_with_4004(fake: FakeQQ, client: Client) -> None:
    await client.fetch_token()
    ws = await client.connect()
    await recv(ws)
    await send(ws, {"op": 2, "d": {"token": "QQBot stale", "intents": INTENTS, "shard": [0, 1]}})
    assert await closed_with(ws) == 4004


async def test_resume_after_4009_replays_missed_events(fake: FakeQQ, client: Client) -> None:
    ws, ready = await client.session()
    session_id = ready["d"]["session_id"]
    fake.inject_message(USER, "one")
    seen = await recv(ws)
    assert seen["s"] == 2
    assert fake.close_next(4009) == 1
    assert await closed_with(ws) == 4009
    await fake.wait_until(lambda: fake.live_connections == 0, WAIT)
    fake.inject_message(USER, "two")  # while disconnected: buffered for the session
    fake.inject_message(USER, "three")

    ws = await client.connect()
    assert (await recv(ws))["op"] == 10
    await send(ws, {"op": 6, "d": {"token": f"QQBot {client.token}", "session_id": session_id,
                                   "seq": seen["s"]}})
    replayed = [await recv(ws), await recv(ws)]
    assert [(e["s"], e["d"]["content"]) for e in replayed] == [(3, "two"), (4, "three")]
    resumed = await recv(ws)
    assert (resumed["op"], resumed["t"]) == (0, "RESUMED")
    assert (fake.resume_count, fake.identify_count) == (1, 1)
    fake.inject_message(USER, "four")
    assert (await recv(ws))["s"] == resumed["s"] + 1
    await ws.close()


@pytest.mark.parametrize("code", [4006, 4009, 4914, 4915, 4008])
async def test_close_codes_arrive_as_sent(fake: FakeQQ, client: Client, code: int) -> None:
    ws, ready = await client.session()
    fake.close_next(code, "scripted")
    assert await closed_with(ws) == code
    # Only 4008/4009 leave the session resumable.
    ws = await client.connect()
    await recv(ws)
    await send(ws, {"op": 6, "d": {"token": f"QQBot {client.token}",
                                   "session_id": ready["d"]["session_id"], "seq": 1}})
    if code in (4008, 4009):
        assert (await recv(ws))["t"] == "RESUMED"
        await ws.close()
    else:
        assert await closed_with(ws) == 4006


async def test_close_next_on_connect_and_on_identify(fake: FakeQQ, client: Client) -> None:
    await client.fetch_token()
    assert fake.close_next(4009) == 0  # nothing open: applies to the next connection
    ws = await client.connect()
    assert (await recv(ws))["op"] == 10  # Hello first, then the close
    assert await closed_with(ws) == 4009

    fake.close_next(4914, on="identify")
    ws = await client.connect()
    await recv(ws)
    await send(ws, {"op": 2, "d": {"token": f"QQBot {client.token}", "intents": INTENTS,
                                   "shard": [0, 1]}})
    assert await closed_with(ws) == 4914
    assert fake.identify_count == 0


async def test_op7_reconnect(fake: FakeQQ, client: Client) -> None:
    ws, _ = await client.session()
    assert fake.send_reconnect() == 1
    assert await recv(ws) == {"op": 7}
    await ws.close()


async def test_invalid_session(fake: FakeQQ, client: Client) -> None:
    ws, ready = await client.session()
    fake.send_invalid_session(resumable=True)
    assert await recv(ws) == {"op": 9, "d": True}
    fake.send_invalid_session(resumable=False)
    assert await recv(ws) == {"op": 9, "d": False}
    await ws.close()
    ws = await client.connect()
    await recv(ws)
    await send(ws, {"op": 6, "d": {"token": f"QQBot {client.token}",
                                   "session_id": ready["d"]["session_id"], "seq": 1}})
    assert await closed_with(ws) == 4006  # the session is gone: Identify again


async def test_stop_acking_is_a_dead_peer(fake: FakeQQ, client: Client) -> None:
    ws, _ = await client.session()
    fake.stop_acking()
    await send(ws, {"op": 1, "d": 1})
    with pytest.raises(TimeoutError):
        await recv(ws, timeout=0.3)  # no ACK ...
    pong = await ws.ping()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pong, 0.3)  # ... and no protocol-level pong either
    assert fake.live_connections == 1  # while the socket stays open
    fake.resume_acking()
    await send(ws, {"op": 1, "d": 1})
    assert await recv(ws) == {"op": 11}
    await ws.close()


async def test_stop_acking_new_connections_get_no_hello(fake: FakeQQ, client: Client) -> None:
    await client.fetch_token()
    fake.stop_acking(include_new=True)
    ws = await client.connect()
    with pytest.raises(TimeoutError):
        await recv(ws, timeout=0.3)
    fake.resume_acking()
    ws2 = await client.connect()
    assert (await recv(ws2))["op"] == 10
    await ws2.close()
    await ws.close()  # the deaf connection never answers the close: the client times out


async def test_missing_heartbeats_close_with_4009(http: aiohttp.ClientSession) -> None:
    async with FakeQQ(heartbeat_interval_ms=200, heartbeat_timeout_factor=1.5) as fake:
        client = Client(fake, http)
        ws, _ = await client.session()
        assert await closed_with(ws) == 4009


async def test_drop_quickly(fake: FakeQQ, client: Client) -> None:
    await client.fetch_token()
    fake.drop_quickly(2)
    fake.drop_quickly(1, code=4009)
    for expected in (None, None, 4009):
        ws = await client.connect()
        assert (await recv(ws))["op"] == 10
        assert await closed_with(ws) == expected
    ws, _ = await client.session()  # the burst is over
    assert fake.connection_count == 4
    await ws.close()


async def test_replies_are_recorded(
    fake: FakeQQ, client: Client, http: aiohttp.ClientSession
) -> None:
    await client.fetch_token()
    msg_id = fake.inject_message(USER, "question")
    url = f"{fake.base_url}/v2/users/{USER}/messages"
    body = {"content": "answer", "msg_type": 0, "msg_id": msg_id, "msg_seq": 1}
    async with http.post(url, json=body, headers=client.auth) as response:
        assert response.status == 200
        assert set(await response.json()) == {"id", "timestamp"}
    sent = await fake.wait_for_sent(lambda m: m.msg_id == msg_id, WAIT)
    assert (sent.scene, sent.target, sent.content) == ("c2c", USER, "answer")
    async with http.post(url, json=body, headers=client.auth) as response:
        assert response.status == 400  # same msg_id + msg_seq: deduplicated by the platform
        assert (await response.json())["code"] == 40054005
    async with http.post(f"{fake.base_url}/v2/groups/{GROUP}/messages",
                         json={"content": "to all", "msg_type": 0}, headers=client.auth) as r:
        assert r.status == 200
    async with http.post(url, json=body, headers={"Authorization": "QQBot wrong"}) as response:
        assert response.status == 401
    assert [(m.scene, m.text) for m in fake.sent_messages] == [("c2c", "answer"),
                                                              ("group", "to all")]


async def test_refuse_and_accept_connections(fake: FakeQQ, client: Client) -> None:
    ws, ready = await client.session()
    url = await client.gateway_url()
    await fake.refuse_connections()
    assert await closed_with(ws) is None  # reset, no close frame
    with pytest.raises(OSError):
        await connect(url, open_timeout=WAIT)
    await fake.accept_connections()
    ws = await client.connect()  # same port, same URL
    await recv(ws)
    await send(ws, {"op": 6, "d": {"token": f"QQBot {client.token}",
                                   "session_id": ready["d"]["session_id"], "seq": 1}})
    assert (await recv(ws))["t"] == "RESUMED"  # a dropped link leaves the session resumable
    await ws.close()


async def test_remote_control_api(
    fake: FakeQQ, client: Client, http: aiohttp.ClientSession
) -> None:
    control = fake.control_url

    async def post(action: str, **body: object) -> Any:
        async with http.post(f"{control}/{action}", json=body) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["result"]

    ws, _ = await client.session()
    msg_id = await post("inject_message", openid=USER, content="remote")
    assert (await recv(ws))["d"]["id"] == msg_id
    assert await post("send_reconnect") == 1
    assert await recv(ws) == {"op": 7}
    assert await post("send_invalid_session", resumable=True) == 1
    assert await recv(ws) == {"op": 9, "d": True}
    await post("stop_acking")
    await send(ws, {"op": 1, "d": 2})
    with pytest.raises(TimeoutError):
        await recv(ws, timeout=0.3)
    await post("resume_acking")
    assert await post("close_next", code=4009) == 1
    assert await closed_with(ws) == 4009

    await post("drop_quickly", n=1, code=4900)
    ws = await client.connect()
    await recv(ws)
    assert await closed_with(ws) == 4900
    await post("fail_token_next", n=1, status=500)
    async with http.post(f"{fake.base_url}/app/getAppAccessToken", json={}) as response:
        assert response.status == 500

    async with http.post(f"{fake.base_url}/v2/users/{USER}/messages",
                         json={"content": "out", "msg_id": msg_id}, headers=client.auth) as r:
        assert r.status == 200
    message = await post("wait_for_sent", timeout=WAIT, match={"scene": "c2c"}, contains="ou")
    assert message["content"] == "out"
    async with http.get(f"{control}/sent") as response:
        assert len((await response.json())["result"]) == 1
    async with http.get(f"{control}/state") as response:
        state = (await response.json())["result"]
    assert state["connection_count"] == 2 and state["identify_count"] == 1
    assert state["calls"]["heartbeat"] == 1  # counted though the deaf peer did not answer

    await post("refuse_connections")
    with pytest.raises(OSError):
        await client.connect()
    await post("accept_connections")
    ws, _ = await client.session()
    await ws.close()
    await post("expire_tokens")
    async with http.get(f"{fake.base_url}/gateway", headers=client.auth) as response:
        assert response.status == 401
    async with http.post(f"{control}/close_next", json={"code": 4009, "on": "later"}) as r:
        assert r.status == 400


async def test_cli_prints_ready_and_stops_on_sigterm(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchboard_testkit.fake_qq", "--port", "0",
        "--app-id", "42", "--client-secret", "s3cret", stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        word, base_url = line.split()
        assert word == "READY" and base_url.startswith("http://127.0.0.1:")
        async with http.post(f"{base_url}/app/getAppAccessToken",
                             json={"appId": "42", "clientSecret": "s3cret"}) as response:
            assert "access_token" in await response.json()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_fakes_callback_signatures_are_the_qq_docs_own() -> None:
    """The fake signs as QQ does: the docs' example secret, body and timestamp give the docs'
    signature (sign.md), and its op 13 example (event-emit.md) too."""
    from switchboard_testkit.fake_qq_callback import platform_key

    key = platform_key("naOC0ocQE3shWLAfffVLB1rhYPG7")
    body = b'{\n  "op": 0,\n  "d": {},\n  "t": "GATEWAY_EVENT_NAME"\n}'
    assert key.sign(b"1725442341" + body).hex() == (
        "865ad13a61752ca65e26bde6676459cd36cf1be609375b37bd62af366e1dc25a"
        "8dc789ba7f14e017ada3d554c671a911bfdf075ba54835b23391d509579ed002")
    assert platform_key("DG5g3B4j9X2KOErG").sign(b"1725442341Arq0D5A61EgUu4OxUvOp").hex() == (
        "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d0"
        "1bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706")
