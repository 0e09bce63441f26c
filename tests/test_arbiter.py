"""Several satellites on one real mosquitto: exactly one answers each wake word, every satellite reaching the same
verdict by itself; a lone satellite answers at once; without the broker a satellite answers alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemon.mqtt.topics import arbitration_topic
from tests.support.broker import Broker
from tests.support.mqttworld import World, world
from tests.support.presence_helpers import Satellite, satellite
from tests.support.waiting import eventually

TOPIC = "livehome/arbitration"


@contextlib.asynccontextmanager
async def satellites(broker: Broker, *ids: str, window: str = "0.3s", **kw: Any) -> AsyncIterator[list[Satellite]]:
    """Satellites that all know each other are online."""
    async with contextlib.AsyncExitStack() as stack:
        sats = [
            await stack.enter_async_context(satellite(broker, sid, arbitration={"window": window}, **kw)) for sid in ids
        ]
        for s in sats:
            others = set(ids) - {s.config.assistant.id}
            await eventually(
                lambda s=s, others=others: s.arbiter.peers == others, what=f"{s.config.assistant.id}'s peers"
            )
        yield sats


def claims(w: World) -> list[dict[str, Any]]:
    return [s.json() for s in w.on(TOPIC)]


def stood_down(w: World, sat: Satellite) -> list[dict[str, Any]]:
    return [e for e in (s.json() for s in w.on(sat.topics.events)) if e["event_type"] == "stood_down"]


async def next_round(sats: list[Satellite]) -> None:
    """Wait until the last round can no longer take late claims, so the next claims start a round of their own."""
    await eventually(lambda: all(s.arbiter.settled for s in sats), what="the round to settle")


async def test_two_satellites_exactly_one_answers_for_several_rounds(broker: Broker) -> None:
    async with world(broker) as w, satellites(broker, "kitchen", "hall") as sats:
        kitchen, hall = sats
        rounds = [(0.9, 0.6), (0.55, 0.8), (0.71, 0.7), (0.3, 0.99)]
        for k_score, h_score in rounds:
            await next_round(sats)
            won = await asyncio.gather(
                kitchen.arbiter.claim("hey_jarvis", k_score), hall.arbiter.claim("hey_jarvis", h_score)
            )
            assert won == [k_score > h_score, h_score > k_score]
        await kitchen.presence.flush(5)
        await hall.presence.flush(5)
        await w.fence(kitchen.link)
        await w.fence(hall.link)
        assert len(claims(w)) == 2 * len(rounds)
        assert all(c["decided"] is False for c in claims(w))  # each knew of the other: nobody skipped the window
        assert [e["winner"] for e in stood_down(w, kitchen)] == ["hall", "hall"]
        assert [(e["winner"], e["winner_score"], e["score"]) for e in stood_down(w, hall)] == [
            ("kitchen", 0.9, 0.6),
            ("kitchen", 0.71, 0.7),
        ]


async def test_three_satellites_exactly_one_answers_and_ties_go_to_the_lowest_id(broker: Broker) -> None:
    async with satellites(broker, "c-bath", "a-hall", "b-den") as sats:
        for scores, expected in [
            ((0.5, 0.7, 0.6), "a-hall"),
            ((0.9, 0.7, 0.6), "c-bath"),
            ((0.5, 0.6, 0.7), "b-den"),
            ((0.8, 0.8, 0.8), "a-hall"),  # a tie: the lowest id, as every satellite decides alike
            ((0.8, 0.7, 0.8), "b-den"),
            ((0.6, 0.6, 0.6), "a-hall"),
            ((0.4, 0.3, 0.4), "b-den"),
            ((0.4, 0.4, 0.4), "a-hall"),
        ]:
            await next_round(sats)
            won = await asyncio.gather(*(s.arbiter.claim("alexa", sc) for s, sc in zip(sats, scores, strict=True)))
            assert sum(won) == 1
            assert sats[won.index(True)].config.assistant.id == expected


async def test_different_wake_words_do_not_compete(broker: Broker) -> None:
    async with satellites(broker, "one", "two") as (one, two):
        won = await asyncio.gather(one.arbiter.claim("alexa", 0.5), two.arbiter.claim("hey_jarvis", 0.9))
        assert won == [True, True]


async def test_a_claim_made_within_the_window_still_competes(broker: Broker) -> None:
    """The second detection comes after the first claim is out: it joins that claim's round (remembered from
    before its own detection) and wins on score; the first claimant stands down."""
    async with world(broker) as w, satellites(broker, "early", "better", window="1s") as (early, better):
        first = asyncio.create_task(early.arbiter.claim("hey_jarvis", 0.6))
        await w.wait_for(lambda s: s.topic == TOPIC and s.json()["id"] == "early")
        assert await better.arbiter.claim("hey_jarvis", 0.95) is True
        assert await first is False
        await early.presence.flush(5)
        await w.fence(early.link)
        [event] = stood_down(w, early)
        assert (event["winner"], event["winner_score"], event["word"]) == ("better", 0.95, "hey_jarvis")


async def test_a_late_claim_stands_down_whatever_its_score(broker: Broker) -> None:
    """A detection that reaches the others after the round has closed is the same utterance heard late: the
    round's winner is already answering."""
    async with satellites(broker, "near", "far", window="1s") as (near, far):
        assert await near.arbiter.claim("hey_jarvis", 0.5) is True
        assert await far.arbiter.claim("hey_jarvis", 0.99) is False
        assert await near.arbiter.claim("hey_jarvis", 0.2) is True  # late after its own win: still its round
        await next_round([near, far])
        assert await far.arbiter.claim("hey_jarvis", 0.99) is True  # a new utterance later is a new round


async def test_a_lone_satellite_answers_without_waiting_the_window(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "solo", arbitration={"window": "1s"}) as solo:
        assert solo.arbiter.peers == frozenset()
        # Waiting the 1 s window would miss this deadline by half a second.
        assert await asyncio.wait_for(solo.arbiter.claim("hey_jarvis", 0.7), 0.5) is True
        claim = (await w.wait_for(lambda s: s.topic == TOPIC)).json()
        assert (claim["id"], claim["decided"], claim["score"]) == ("solo", True, 0.7)
        async with satellite(broker, "newcomer"):
            await eventually(lambda: solo.arbiter.peers == {"newcomer"}, what="the newcomer to be seen")
            await next_round([solo])
            assert await solo.arbiter.claim("hey_jarvis", 0.7) is True
            assert claims(w)[-1]["decided"] is False  # with a peer online it waited for the round
        await eventually(lambda: solo.arbiter.peers == frozenset(), what="the newcomer to go offline")


async def test_a_decided_claim_is_honoured_only_when_it_has_the_best_score(broker: Broker) -> None:
    """`quiet` publishes no availability, so `loud` believes it is alone and answers at once (decided). `quiet`
    sees `loud` online and waits: loud's decided claim does not outrank quiet's better score, or anyone on the
    broker could silence every satellite with `decided: true`. Against a worse score it still wins."""
    async with (
        world(broker) as w,
        satellite(broker, "loud") as loud,
        satellite(broker, "quiet", presence=False) as quiet,
    ):
        await eventually(lambda: quiet.arbiter.peers == {"loud"}, what="quiet to see loud")
        assert loud.arbiter.peers == frozenset()
        won = await asyncio.gather(loud.arbiter.claim("alexa", 0.5), quiet.arbiter.claim("alexa", 0.9))
        assert won == [True, True]  # loud had answered already; quiet heard it best
        assert sorted(c["decided"] for c in claims(w)) == [False, True]
        await next_round([loud, quiet])
        won = await asyncio.gather(loud.arbiter.claim("alexa", 0.9), quiet.arbiter.claim("alexa", 0.5))
        assert won == [True, False]


async def test_broker_down_means_answering_alone(broker: Broker) -> None:
    async with satellites(broker, "attic", "cellar") as (attic, _):
        broker.stop()
        await eventually(lambda: not attic.link.connected, what="the link to notice")
        assert await attic.arbiter.claim("hey_jarvis", 0.4) is True
        broker.start()  # so the satellites can say goodbye


async def test_a_hung_broker_costs_at_most_the_window(broker: Broker) -> None:
    async with satellites(broker, "left", "right") as (left, _):
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing, the socket stays open
        try:
            assert await asyncio.wait_for(left.arbiter.claim("hey_jarvis", 0.4), 10) is True
        finally:
            broker.proc.send_signal(signal.SIGCONT)


async def test_disabled_arbitration_publishes_nothing(broker: Broker) -> None:
    async with (
        world(broker) as w,
        satellite(broker, "free", arbitration={"enabled": False}) as free,
        satellite(broker, "other"),
    ):
        await eventually(lambda: free.arbiter.peers == {"other"}, what="the peer")
        assert await free.arbiter.claim("hey_jarvis", 0.1) is True
        await w.fence(free.link)
        assert claims(w) == []


async def test_bad_claims_are_ignored_with_a_warning_naming_the_field(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="livehome.mqtt.arbiter")
    async with world(broker) as w, satellites(broker, "x1", "x2") as (x1, x2):
        assert arbitration_topic(x1.config) == TOPIC
        bad = [
            b"not json",
            b"[1]",
            json.dumps({"id": "evil/one", "word": "alexa", "score": 1, "nonce": "n", "window": 0.3}).encode(),
            json.dumps({"id": "x9", "word": "alexa", "score": "high", "nonce": "n", "window": 0.3}).encode(),
            json.dumps({"id": "x9", "word": "alexa", "score": 1, "nonce": "n", "window": 60}).encode(),
            json.dumps({"id": "x9", "word": "", "score": 1, "nonce": "n", "window": 0.3}).encode(),
        ]
        for payload in bad:
            await w.client.publish(TOPIC, payload, qos=1)
        await w.fence(x1.link)
        await w.fence(x2.link)
        won = await asyncio.gather(x1.arbiter.claim("alexa", 0.2), x2.arbiter.claim("alexa", 0.3))
        assert won == [False, True]  # none of the bad claims took part
        text = "\n".join(r.getMessage() for r in caplog.records if r.name == "livehome.mqtt.arbiter")
        for field in (
            "not valid JSON",
            "not a JSON object",
            "id: must be",
            "score: must be",
            "window: must be",
            "word: must",
        ):
            assert field in text


async def test_two_satellites_with_one_id_are_reported(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="livehome.mqtt.arbiter")
    async with (
        satellite(broker, "twin") as a,
        satellite(broker, "twin", presence=False, client_id="livehome-twin-2"),
    ):
        await a.arbiter.claim("alexa", 0.5)
        await eventually(
            lambda: any("also uses assistant.id twin" in r.getMessage() for r in caplog.records), what="the warning"
        )
