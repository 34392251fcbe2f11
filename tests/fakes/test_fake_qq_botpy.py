"""The fake QQ platform driven by the official SDK, qq-botpy 1.2.1 (tencent-connect/botpy):
login, a C2C and a group message answered, and a Resume after close code 4009.

If the fake drifts from the platform in a way the SDK notices (a header, a field's type, the
handshake order), this fails, whatever our own adapter thinks of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import botpy
import pytest
from botpy.http import Route
from botpy.message import C2CMessage, GroupMessage
from botpy.robot import Token

from switchboard_testkit.fake_qq import FakeQQ

TOKEN_URL = "https://bots.qq.com/app/getAppAccessToken"


@pytest.fixture
async def fake() -> AsyncIterator[FakeQQ]:
    async with FakeQQ(heartbeat_interval_ms=30_000) as fake:
        yield fake


@pytest.fixture
def sdk_on_the_fake(fake: FakeQQ, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point botpy at the fake. Its REST host and scheme are class settings (Route); the token
    endpoint is a literal inside Token.update_access_token with no setting, so that one
    constant is replaced in botpy's own code object: everything else runs unchanged."""
    base = fake.base_url.rstrip("/")
    scheme, host = base.split("://", 1)
    monkeypatch.setattr(Route, "SCHEME", scheme)
    monkeypatch.setattr(Route, "DOMAIN", host)
    code = Token.update_access_token.__code__
    consts = tuple(f"{base}/app/getAppAccessToken" if c == TOKEN_URL else c
                   for c in code.co_consts)
    assert consts != code.co_consts, "botpy no longer hard-codes the token URL: use its setting"
    monkeypatch.setattr(Token.update_access_token, "__code__", code.replace(co_consts=consts))
    yield


class EchoBot(botpy.Client):
    """What botpy's own examples do: answer each message passively (with its msg_id)."""

    async def on_c2c_message_create(self, message: C2CMessage) -> None:
        await message._api.post_c2c_message(openid=message.author.user_openid, msg_type=0,
                                            msg_id=message.id, content=f"c2c:{message.content}")

    async def on_group_at_message_create(self, message: GroupMessage) -> None:
        await message._api.post_group_message(group_openid=message.group_openid, msg_type=0,
                                              msg_id=message.id,
                                              content=f"group:{message.content.strip()}")


async def test_botpy_logs_in_answers_c2c_and_group_and_resumes_after_4009(
        fake: FakeQQ, sdk_on_the_fake: None) -> None:
    bot = EchoBot(intents=botpy.Intents(public_messages=True), timeout=5, bot_log=False)
    run = asyncio.create_task(bot.start(appid=fake.app_id, secret=fake.client_secret))
    try:
        await fake.wait_until(lambda: fake.calls["identify"] == 1 and fake.live_connections == 1
                              , timeout=10)
        assert fake.calls["getAppAccessToken"] == 1 and fake.calls["gateway"] == 1

        c2c = fake.inject_message(content="hello")
        sent = await fake.wait_for_sent(lambda m: m.msg_id == c2c, timeout=10)
        assert (sent.scene, sent.content) == ("c2c", "c2c:hello")

        group = fake.inject_message(content="hi all", group_openid="GROUP0PENID")
        sent = await fake.wait_for_sent(lambda m: m.msg_id == group, timeout=10)
        assert (sent.scene, sent.target, sent.content) == ("group", "GROUP0PENID",
                                                           "group:hi all")

        # 4009 (session timed out): the SDK resumes the same session rather than identifying.
        assert fake.close_next(4009, "session timed out") == 1
        await fake.wait_until(lambda: fake.calls["resume"] == 1 and fake.live_connections == 1,
                              timeout=15)
        assert fake.calls["identify"] == 1
        after = fake.inject_message(content="still there")
        sent = await fake.wait_for_sent(lambda m: m.msg_id == after, timeout=10)
        assert sent.content == "c2c:still there"
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await bot.close()
