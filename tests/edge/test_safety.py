"""edge/safety.py: properties of the pure protocol caps (hypothesis) and of the user's local day."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.messages import Zone
from contract.protocol import EYE_ZONES, MODEL_LIMITS, ModelLimits, TreatmentProtocol, ZoneLimit
from edge.safety import (
    DayUsage,
    SessionGuard,
    accrue,
    after_start,
    envelope,
    local_day,
    refuse_start,
    usage_on,
)

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
models = st.sampled_from(sorted(MODEL_LIMITS))
ua = st.floats(min_value=1.0, max_value=1000.0, allow_nan=False)


@st.composite
def protocols(draw: st.DrawFn) -> TreatmentProtocol:
    """Any protocol, including ones over a model's limits: the guard must hold even for those."""
    zones = draw(st.lists(st.sampled_from(list(Zone)), min_size=1, max_size=len(Zone), unique=True))
    return TreatmentProtocol(
        protocol_id="p",
        version=draw(st.integers(1, 50)),
        models=tuple(MODEL_LIMITS),
        issued_at=T0,
        level_current_ua=tuple(draw(st.lists(ua, min_size=1, max_size=8))),
        zones=tuple(ZoneLimit(z, draw(ua), draw(st.floats(1, 600))) for z in zones),
        session_max_s=draw(st.integers(1, 4000)),
        sessions_per_day_max=draw(st.integers(1, 4)),
        daily_active_max_s=draw(st.integers(1, 4000)),
    )


steps = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(list(Zone))),  # zone (None: position unknown)
        st.integers(-2, 25),  # level, also out of range
        st.floats(0, 30, allow_nan=False),  # seconds since the previous reading
        st.floats(0, 30, allow_nan=False),  # active seconds added to the day
    ),
    min_size=1,
    max_size=60,
)


def expected_cap(protocol: TreatmentProtocol | None, limits: ModelLimits, zone: Zone) -> float:
    """The cap computed independently of the code under test."""
    if zone in limits.restricted_zones:
        return 0.0
    model_cap = limits.eye_max_current_ua if zone in EYE_ZONES else limits.rated_max_current_ua
    if protocol is None:
        return model_cap
    listed = protocol.zone_limit(zone)
    return 0.0 if listed is None else min(listed.max_current_ua, model_cap)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), protocols()), models, steps, st.floats(0, 5000))
def test_no_reading_sequence_drives_above_the_zone_cap(
    protocol: TreatmentProtocol | None,
    model: str,
    seq: list[tuple[Zone | None, int, float, float]],
    day0: float,
) -> None:
    limits = MODEL_LIMITS[model]
    env = envelope(protocol, limits)
    guard = SessionGuard(env)
    elapsed, day_active, ended = 0.0, day0, False
    previous_key: str | None = None
    for zone, level, dt, active in seq:
        elapsed += dt
        day_active += active
        d = guard.step(zone, level, elapsed, day_active)
        caps = [expected_cap(protocol, limits, z) for z in Zone]
        cap = expected_cap(protocol, limits, zone) if zone else min([c for c in caps if c > 0] or [0.0])
        assert 0.0 <= d.output_ua <= cap
        assert d.output_ua <= limits.rated_max_current_ua
        session_max = math.inf if protocol is None else min(protocol.session_max_s, limits.auto_off_s)
        over_day = protocol is not None and day_active >= protocol.daily_active_max_s
        must_end = ended or elapsed >= session_max or over_day
        assert d.end is must_end
        if d.end:
            assert d.output_ua == 0.0
            if not ended:  # the step that ends says why, with the limit
                assert {i.detail for i in d.interventions} & {"session_max_s", "daily_active_max_s"}
            else:
                assert d.interventions == ()
            ended = True
            continue
        requested = env.level_ua(level)
        key = None
        if cap <= 0:
            key = "restricted_zone"
        elif requested > cap:
            key = "zone_cap"
        full_key = f"{key}:{zone.value if zone else 'unknown'}" if key else None
        details = [i.detail for i in d.interventions]
        if full_key is not None and full_key != previous_key:
            assert details == [full_key]  # entering a clamp is recorded once, with the limit applied
            assert d.interventions[0].value == (0.0 if key == "restricted_zone" else cap)
        else:
            assert details == []
        previous_key = full_key


def test_unlisted_and_restricted_zones_get_no_output() -> None:
    p = TreatmentProtocol(
        protocol_id="p",
        version=1,
        models=("mf-home-1",),
        issued_at=T0,
        level_current_ua=(100.0, 300.0),
        zones=(ZoneLimit(Zone.CHEEK_L, 250.0, 60.0), ZoneLimit(Zone.TEMPLE, 100.0, 60.0)),
    )
    guard = SessionGuard(envelope(p, MODEL_LIMITS["mf-home-1"]))
    d = guard.step(Zone.CHEEK_L, 2, 1, 1)
    assert (d.output_ua, d.interventions[0]) == (250.0, ("zone_cap:cheek_l", 250.0))
    d = guard.step(Zone.FOREHEAD, 2, 2, 2)  # not in the protocol
    assert d.output_ua == 0.0 and d.interventions[0].detail == "restricted_zone:forehead"
    d = guard.step(Zone.TEMPLE, 1, 3, 3)  # listed, but restricted for the model
    assert d.output_ua == 0.0 and d.interventions[0].detail == "restricted_zone:temple"
    assert guard.step(Zone.CHEEK_L, 1, 4, 4).output_ua == 100.0


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-720, 840),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)),
    st.integers(1, 5),
)
def test_daily_limits_follow_the_users_local_day(tz_min: int, now: datetime, per_day: int) -> None:
    local = now.astimezone(timezone(timedelta(minutes=tz_min)))
    assert local_day(now, tz_min) == local.date()
    env = envelope(
        TreatmentProtocol(
            protocol_id="p",
            version=1,
            models=("mf-home-1",),
            issued_at=T0,
            level_current_ua=(100.0,),
            zones=(ZoneLimit(Zone.CHEEK_L, 250.0, 60.0),),
            sessions_per_day_max=per_day,
            daily_active_max_s=600,
        ),
        MODEL_LIMITS["mf-home-1"],
    )
    usage: DayUsage | None = None
    for _ in range(per_day):
        assert refuse_start(env, usage_on(usage, now, tz_min)) is None
        usage = after_start(usage, now, tz_min)
    refusal = refuse_start(env, usage_on(usage, now, tz_min))
    assert refusal is not None and refusal.detail == "sessions_per_day_max" and refusal.limit == per_day
    # the last second of the same local day still counts; the first second of the next does not
    end_of_day = datetime.combine(local.date(), datetime.max.time(), local.tzinfo).astimezone(UTC)
    assert refuse_start(env, usage_on(usage, end_of_day, tz_min)) is not None
    next_day = end_of_day + timedelta(microseconds=1)
    assert refuse_start(env, usage_on(usage, next_day, tz_min)) is None


def test_daily_active_time_refuses_and_resets_at_local_midnight() -> None:
    env = envelope(
        TreatmentProtocol(
            protocol_id="p",
            version=1,
            models=("mf-home-1",),
            issued_at=T0,
            level_current_ua=(100.0,),
            zones=(ZoneLimit(Zone.CHEEK_L, 250.0, 60.0),),
            sessions_per_day_max=10,
            daily_active_max_s=600,
        ),
        MODEL_LIMITS["mf-home-1"],
    )
    tz = 120  # UTC+2: 21:30 UTC is 23:30 local, 22:30 UTC is 00:30 the next local day
    late = datetime(2026, 11, 26, 21, 30, tzinfo=UTC)
    usage = accrue(after_start(None, late, tz), late, tz, 600)
    refusal = refuse_start(env, usage_on(usage, late, tz))
    assert refusal is not None and refusal.detail == "daily_active_max_s" and refusal.limit == 600
    assert refuse_start(env, usage_on(usage, late + timedelta(hours=1), tz)) is None
    # the same UTC instant with UTC-5 is still the 26th, 16:30 local: refused as well
    assert refuse_start(env, usage_on(accrue(None, late, -300, 600), late, -300)) is not None


def test_local_day_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        local_day(datetime(2026, 1, 1), 0)
