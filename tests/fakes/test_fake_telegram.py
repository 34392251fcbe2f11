"""FakeTelegram driven by the real client (python-telegram-bot), plus raw HTTP where PTB hides
the wire format, the remote-control API and the CLI."""

from __future__ import annotations

import asyncio
import datetime as dtm
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from telegram import Bot
from telegram.error import BadRequest, Conflict, InvalidToken, NetworkError, RetryAfter, TimedOut
from telegram.ext import Application, MessageHandler, filters

from switchboard_testkit.fake_telegram import CONFLICT_DESCRIPTION, FakeTelegram

TOKEN = "555000111:AAtestTOKENforFAKEtelegram_abcdefghi"
OTHER_TOKEN = "555000111:AAanotherTOKENforFAKEtelegram_jklmn"
WAIT = 5.0  # upper bound of every wait; nothing here should take more than a fraction of it


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(TOKEN, base_url=fake.base_url) as bot:  # initialize() calls getMe
        yield bot


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


@pytest.fixture(autouse=True)
def _timedelta_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    # PTB 22 warns when time periods are read as ints; opt in to timedelta values.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


async def test_get_me_uses_base_url_and_token(fake: FakeTelegram, bot: Bot) -> None:
    assert fake.base_url == f"http://127.0.0.1:{fake.port}/bot"
    me = await bot.get_me()
    assert me.id == 555000111  # the bot id is the token's prefix, as on Telegram
    assert me.is_bot and me.username == fake.bot_username
    assert fake.calls["getMe"] == 2  # initialize() + get_me()
    assert fake.call_count("getme") == 2


async def test_get_updates_offset_and_limit_semantics(fake: FakeTelegram, bot: Bot) -> None:
    ids = [fake.inject_message(42, f"m{i}") for i in range(3)]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]

    updates = await bot.get_updates()
    assert [u.update_id for u in updates] == ids
    message = updates[0].message
    assert message is not None and message.text == "m0"
    assert message.chat.id == 42 and message.chat.type == "private"
    assert message.from_user is not None and message.from_user.id == 42
    assert len(fake.pending_updates) == 3  # returned is not confirmed

    updates = await bot.get_updates(offset=ids[1])  # confirms ids[0]
    assert [u.update_id for u in updates] == ids[1:]
    assert [u["update_id"] for u in fake.pending_updates] == ids[1:]

    updates = await bot.get_updates(offset=ids[1], limit=1)
    assert [u.update_id for u in updates] == [ids[1]]

    assert await bot.get_updates(offset=ids[2] + 1) == ()
    assert fake.pending_updates == []

    more = [fake.inject_message(42, f"n{i}") for i in range(3)]
    updates = await bot.get_updates(offset=-1)  # keep only the last one
    assert [u.update_id for u in updates] == [more[2]]
    assert [u["update_id"] for u in fake.pending_updates] == [more[2]]


async def test_commands_carry_a_bot_command_entity(fake: FakeTelegram, bot: Bot) -> None:
    fake.inject_message(-1001234, "/start now", from_user={"id": 7, "is_bot": False,
                                                           "first_name": "Ann"})
    (update,) = await bot.get_updates()
    assert update.message is not None
    assert update.message.chat.type == "supergroup"
    assert update.message.from_user is not None and update.message.from_user.first_name == "Ann"
    assert update.message.parse_entities(["bot_command"]) != {}


async def test_long_poll_answers_as_soon_as_an_update_arrives(
    fake: FakeTelegram, bot: Bot
) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_until(lambda: fake.active_polls == 1, WAIT, "poll parked")
    update_id = fake.inject_message(1, "wake up")
    updates = await asyncio.wait_for(poll, WAIT)  # far sooner than the 30 s poll timeout
    assert [u.update_id for u in updates] == [update_id]


async def test_long_poll_honours_timeout(fake: FakeTelegram, bot: Bot) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(bot.get_updates(timeout=1), WAIT) == ()
    assert 0.9 <= loop.time() - started < WAIT
    assert await bot.get_updates(timeout=0) == ()  # short poll


async def test_send_message_is_recorded(fake: FakeTelegram, bot: Bot) -> None:
    fake.inject_message(99, "hi")  # makes the chat known, as a user writing first does
    sent = await bot.send_message(99, "hello back")
    assert sent.text == "hello back" and sent.chat.id == 99
    assert sent.from_user is not None and sent.from_user.id == 555000111
    record = await fake.wait_for_sent(lambda m: m.chat_id == 99, WAIT)
    assert record.text == "hello back" and record.message_id == sent.message_id
    assert sent.message_id == 2  # message ids count per chat: the user's message was 1
    await bot.send_chat_action(99, "typing")
    assert fake.calls["sendChatAction"] == 1
    with pytest.raises(BadRequest, match=r"[Cc]hat not found"):
        await bot.send_message("@nobody", "x")
    assert len(fake.sent_messages) == 1


async def test_wait_for_sent_times_out(fake: FakeTelegram) -> None:
    with pytest.raises(TimeoutError):
        await fake.wait_for_sent(timeout=0.2)


async def test_wrong_and_malformed_tokens_raise_invalid_token(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(InvalidToken):
        async with Bot(OTHER_TOKEN, base_url=fake.base_url):  # initialize() calls getMe
            pass
    async with http.post(f"{fake.base_url}{OTHER_TOKEN}/getMe") as response:
        assert response.status == 401
        assert await response.json() == {"ok": False, "error_code": 401,
                                         "description": "Unauthorized"}
    async with http.post(f"{fake.base_url}not-a-token/getMe") as response:
        assert response.status == 404
    async with http.post(f"{fake.base_url}{TOKEN}/noSuchMethod") as response:
        assert response.status == 404
        assert await response.json() == {"ok": False, "error_code": 404,
                                         "description": "Not Found"}


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (lambda f: f.conflict_next(1), Conflict),
        (lambda f: f.fail_next(1, 502), NetworkError),
        (lambda f: f.fail_next(1, 500), NetworkError),
        (lambda f: f.fail_next(1, 503, body="json"), NetworkError),
        (lambda f: f.revoke_token(), InvalidToken),
    ],
    ids=["409", "502-html", "500-json", "503-json", "revoked"],
)
async def test_faults_map_to_ptb_exceptions(
    fake: FakeTelegram, bot: Bot, script: object, expected: type[Exception]
) -> None:
    script(fake)  # type: ignore[operator]
    with pytest.raises(expected) as caught:
        await bot.get_updates()
    assert type(caught.value) is expected  # e.g. not TimedOut for a 502
    if expected is Conflict:
        assert str(caught.value) == CONFLICT_DESCRIPTION
    if expected is not InvalidToken:
        assert await bot.get_updates() == ()  # the fault was used up


async def test_rate_limit_carries_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.rate_limit_next(2, retry_after=7, method="sendMessage")
    for _ in range(2):
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(5, "flood")
        assert caught.value.retry_after == dtm.timedelta(seconds=7)
    await bot.get_updates()  # other methods were never affected
    await bot.send_message(5, "now it works")
    assert [m.text for m in fake.sent_messages] == ["now it works"]
    assert [r.status for r in fake.call_log if r.method == "sendMessage"] == [429, 429, 200]


async def test_faults_are_served_in_scripted_order(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next(1, 502, method=None)
    fake.conflict_next(1)
    with pytest.raises(NetworkError):
        await bot.get_me()  # method=None: any method
    with pytest.raises(Conflict):
        await bot.get_updates()
    fake.fail_next(3, 502)
    fake.clear_faults()
    assert await bot.get_updates() == ()


async def test_revoke_ends_an_in_flight_poll_and_set_token(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_until(lambda: fake.active_polls == 1, WAIT, "poll parked")
    fake.revoke_token()
    with pytest.raises(InvalidToken):
        await asyncio.wait_for(poll, WAIT)
    fake.set_token(OTHER_TOKEN)
    with pytest.raises(InvalidToken):
        await bot.get_me()
    async with Bot(OTHER_TOKEN, base_url=fake.base_url) as other:
        assert (await other.get_me()).id == 555000111


async def test_newer_poll_terminates_older_with_conflict(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_until(lambda: fake.active_polls == 1, WAIT, "poll parked")
    async with Bot(TOKEN, base_url=fake.base_url) as second_instance:
        assert await second_instance.get_updates(timeout=0) == ()
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await asyncio.wait_for(poll, WAIT)
    # The fake records that the two were in flight together (what fence tests assert on).
    ((first, second),) = fake.overlapping_polls()
    assert first[0] < second[0] < first[1]


async def test_polls_one_after_another_do_not_overlap(fake: FakeTelegram, bot: Bot) -> None:
    for _ in range(3):
        await bot.get_updates(timeout=0)
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_until(lambda: fake.active_polls == 1, WAIT, "poll parked")
    poll.cancel()  # the client hangs up: the span ends when the server notices
    await fake.wait_until(lambda: len(fake.poll_spans) == 4, WAIT, "the hung-up poll recorded")
    assert fake.overlapping_polls() == []


async def test_stalled_request_times_out_client_side(fake: FakeTelegram, bot: Bot) -> None:
    fake.stall_next(1, seconds=30, method="getMe")
    with pytest.raises(TimedOut):
        await bot.get_me(read_timeout=0.3)
    assert (await bot.get_me()).id == 555000111  # only one request was stalled
    assert fake.calls["getMe"] == 3  # initialize(), the stalled one, this one


async def test_stall_shorter_than_client_timeout_only_delays(fake: FakeTelegram, bot: Bot) -> None:
    fake.stall_next(1, seconds=0.3, method="getMe")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bot.get_me(read_timeout=WAIT)
    assert loop.time() - started >= 0.3


async def test_refuse_and_accept_connections(fake: FakeTelegram, bot: Bot) -> None:
    port = fake.port
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_until(lambda: fake.active_polls == 1, WAIT, "poll parked")
    await fake.refuse_connections()
    with pytest.raises(NetworkError):  # the open long poll was reset
        await asyncio.wait_for(poll, WAIT)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(NetworkError):
        await bot.get_me()
    await fake.accept_connections()
    assert fake.port == port
    assert (await bot.get_me()).id == 555000111


async def test_refuse_for_a_duration_reopens_by_itself(fake: FakeTelegram, bot: Bot) -> None:
    await fake.refuse_connections(duration=0.2)
    assert not fake.accepting
    await fake.wait_until(lambda: fake.accepting, WAIT, "listener reopened")
    assert (await bot.get_me()).id == 555000111


async def test_accepts_json_form_and_query_parameters(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}{TOKEN}/sendMessage"
    async with http.post(url, json={"chat_id": 1, "text": "json"}) as response:
        assert response.status == 200
        body = await response.json()
        assert body["ok"] is True and body["result"]["text"] == "json"
    async with http.post(url, data={"chat_id": "2", "text": "form"}) as response:
        assert response.status == 200
    async with http.get(url, params={"chat_id": "3", "text": "query"}) as response:
        assert response.status == 200
    form = aiohttp.FormData({"chat_id": "4", "text": "multipart"})
    form.add_field("document", b"data", filename="x.txt")
    async with http.post(url, data=form) as response:
        assert response.status == 200
    assert [(m.chat_id, m.text) for m in fake.sent_messages] == [
        (1, "json"), (2, "form"), (3, "query"), (4, "multipart")]
    async with http.post(url, json={"chat_id": 1, "text": ""}) as response:
        assert response.status == 400
        assert (await response.json())["description"] == "Bad Request: message text is empty"


async def test_error_bodies_on_the_wire(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}{TOKEN}/getUpdates"
    fake.fail_next(1, 502)
    async with http.post(url) as response:
        assert response.status == 502
        assert response.content_type == "text/html"
        assert "502 Bad Gateway" in await response.text()
    fake.rate_limit_next(1, retry_after=3)
    async with http.post(url) as response:
        assert response.status == 429
        assert await response.json() == {
            "ok": False, "error_code": 429, "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3}}
    fake.conflict_next(1)
    async with http.post(url) as response:
        assert response.status == 409
        assert (await response.json())["description"] == CONFLICT_DESCRIPTION


async def test_delete_webhook_drop_pending_updates(fake: FakeTelegram, bot: Bot) -> None:
    fake.inject_message(1, "old")
    assert await bot.delete_webhook(drop_pending_updates=False)
    assert len(fake.pending_updates) == 1
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert fake.pending_updates == []
    assert [r.params.get("drop_pending_updates") for r in fake.call_log
            if r.method == "deleteWebhook"] == ["false", "true"]  # PTB form-encodes as JSON


async def test_ptb_application_polls_and_replies(fake: FakeTelegram) -> None:
    """The whole PTB stack (Application + Updater long polling) against the fake."""

    async def echo(update: object, context: object) -> None:
        message = update.effective_message  # type: ignore[attr-defined]
        await message.reply_text(f"echo: {message.text}")

    app = Application.builder().token(TOKEN).base_url(fake.base_url).build()
    app.add_handler(MessageHandler(filters.TEXT, echo))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            fake.inject_message(77, "ping")
            reply = await fake.wait_for_sent(lambda m: m.chat_id == 77, WAIT)
            assert reply.text == "echo: ping"
        finally:
            await app.updater.stop()
            await app.stop()
    assert fake.calls["deleteWebhook"] == 1
    assert fake.pending_updates == []  # the updater confirmed what it handled on shutdown


async def test_remote_control_api(
    fake: FakeTelegram, bot: Bot, http: aiohttp.ClientSession
) -> None:
    control = fake.control_url

    async def post(action: str, **body: object) -> object:
        async with http.post(f"{control}/{action}", json=body) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["result"]

    update_id = await post("inject_message", chat_id=5, text="remote")
    (update,) = await bot.get_updates()
    assert update.update_id == update_id and update.message.text == "remote"  # type: ignore[union-attr]

    await post("fail_next", n=1, status=502, method="getMe")
    with pytest.raises(NetworkError):
        await bot.get_me()
    await post("rate_limit_next", n=1, retry_after=4)
    with pytest.raises(RetryAfter):
        await bot.get_updates()
    await post("conflict_next", n=1)
    with pytest.raises(Conflict):
        await bot.get_updates()
    await post("stall_next", n=1, seconds=0.1, method="getMe")
    await bot.get_me()

    await bot.send_message(5, "out")
    async with http.get(f"{control}/sent") as response:
        assert [m["text"] for m in (await response.json())["result"]] == ["out"]
    async with http.post(f"{control}/wait_for_sent",
                         json={"timeout": 0.2, "contains": "nothing like it"}) as response:
        assert response.status == 408
    message = await post("wait_for_sent", timeout=WAIT, match={"chat_id": 5}, contains="ou")
    assert message["text"] == "out"  # type: ignore[index]
    async with http.get(f"{control}/calls") as response:
        calls = (await response.json())["result"]
        assert calls["counts"]["getUpdates"] == 3 and calls["counts"]["sendMessage"] == 1
        assert calls["log"][-1]["method"] == "sendMessage"
    async with http.get(f"{control}/state") as response:
        assert (await response.json())["result"]["token_valid"] is True

    await post("refuse_connections")
    with pytest.raises(NetworkError):
        await bot.get_me()
    await post("accept_connections")  # the control listener stayed up
    await bot.get_me()

    await post("revoke_token")
    with pytest.raises(InvalidToken):
        await bot.get_me()
    await post("set_token", token=TOKEN)
    await bot.get_me()

    async with http.post(f"{control}/no_such_action", json={}) as response:
        assert response.status == 404
    async with http.post(f"{control}/fail_next", json={"bogus": 1}) as response:
        assert response.status == 400
    # The same API is served on the main port too.
    async with http.get(f"{fake.root_url}/_fake/state") as response:
        assert response.status == 200


async def test_cli_prints_ready_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switchboard_testkit.fake_telegram", "--port", "0", "--token", TOKEN,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        word, base_url = line.split()
        assert word == "READY" and base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/bot")
        async with Bot(TOKEN, base_url=base_url) as bot:
            assert (await bot.get_me()).id == 555000111
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ------------------------------------------------------------------ webhooks, as PTB sees them

HOOK_HOST = "hooks.example.test"


async def test_set_webhook_is_checked_as_telegram_checks_it(fake: FakeTelegram, bot: Bot) -> None:
    fake.webhook.route(HOOK_HOST, "127.0.0.1:1")
    for url, says in ((f"http://{HOOK_HOST}/x", "HTTPS URL must be provided"),
                      (f"https://{HOOK_HOST}:9000/x", "ports 80, 88, 443 or 8443"),
                      ("https://unknown.example.test/x", "Failed to resolve host")):
        with pytest.raises(BadRequest, match=f"(?i){says}"):  # PTB rewords the start
            await bot.set_webhook(url)
    with pytest.raises(BadRequest, match="unallowed characters"):
        await bot.set_webhook(f"https://{HOOK_HOST}/x", secret_token="not allowed!")
    assert await bot.set_webhook(f"https://{HOOK_HOST}:8443/x", secret_token="s3cret_-X",
                                 max_connections=3, allowed_updates=["message"])
    info = await bot.get_webhook_info()
    assert (info.url, info.max_connections, info.allowed_updates) == \
        (f"https://{HOOK_HOST}:8443/x", 3, ("message",))
    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook()
    assert (await bot.get_webhook_info()).url == ""
    assert await bot.get_updates(timeout=0) == ()


async def test_pushes_reach_ptbs_own_webhook_server_with_the_secret_token(
        unused_tcp_port: int) -> None:
    """PTB's Updater.start_webhook (tornado) sets the webhook on the fake, refuses requests
    without its secret token (403) and hands the fake's pushes to the handlers."""
    fake = FakeTelegram(TOKEN, allow_http_webhooks=True)
    await fake.start()
    fake.webhook.route(HOOK_HOST, f"127.0.0.1:{unused_tcp_port}")
    seen: list[str] = []
    app = Application.builder().token(TOKEN).base_url(fake.base_url).build()
    app.add_handler(MessageHandler(filters.TEXT, lambda u, c: _record(seen, u)))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_webhook(
            listen="127.0.0.1", port=unused_tcp_port, url_path="hook",
            webhook_url=f"http://{HOOK_HOST}/hook", secret_token="ptb-secret_1")
        assert fake.webhook.settings is not None
        assert fake.webhook.settings.secret_token == "ptb-secret_1"
        fake.inject_message(42, "pushed to PTB")
        await fake.wait_until(lambda: seen == ["pushed to PTB"], WAIT, "PTB's handler")
        await fake.wait_until(lambda: not fake.pending_updates, WAIT, "confirmed by the 200")
        forged = {"update_id": 9, "message": {"message_id": 9, "date": 0, "text": "forged",
                                              "chat": {"id": 1, "type": "private"}}}
        assert await fake.webhook.post(forged, "wrong") == 403  # PTB refuses it too
        assert seen == ["pushed to PTB"]
        await app.updater.stop()
        await app.stop()
    # A push that fails shows in getWebhookInfo, as Telegram reports it, and is retried.
    fake.inject_message(43, "nobody listens")
    await fake.wait_until(lambda: fake.webhook.last_error_message == "Connection refused",
                          WAIT, "the failure in getWebhookInfo")
    await fake.wait_until(lambda: len(fake.webhook.deliveries) >= 3, WAIT, "retried")
    async with Bot(TOKEN, base_url=fake.base_url) as bot:
        info = await bot.get_webhook_info()
    assert info.last_error_message == "Connection refused"
    assert info.pending_update_count == 1 and info.last_error_date is not None
    await fake.stop()


async def _record(seen: list[str], update: object) -> None:
    message = getattr(update, "effective_message", None)
    seen.append(message.text if message is not None else "")
