"""C1, the contraindication gate: from the user's profile, not from telemetry (DOMAIN.md section 6).

A blocking flag gives one blocking decision (episode "contraindication"): the engine must stop protocol
pushes to the device and show the notice. Flags that follow brand policy (metal implants, diabetes) block,
advise (a non-blocking INFO decision, episode "physician-advice") or are allowed, per `C1` params.
"""

from __future__ import annotations

from datetime import date, datetime

import msgspec

from cloud.alerts.decision import AlertDecision, EvidenceValue, OpenAlerts, clear_if_open, raise_unless_open
from cloud.alerts.inputs import Contraindications, DeviceProfile, local_day
from cloud.alerts.params import C1, Policy, RuleId, Severity

BLOCK_KEY = "contraindication"
ADVISE_KEY = "physician-advice"


def age_years(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def contraindication_reasons(
    flags: Contraindications, params: C1, today: date
) -> tuple[list[str], list[str]]:
    """(blocking, advisory) reason codes, sorted."""
    block = [
        name
        for name in ("pregnancy", "implanted_electronics", "epilepsy", "active_cancer")
        if getattr(flags, name)
    ]
    if flags.under_18 or (
        flags.birth_date is not None and age_years(flags.birth_date, today) < params.min_age_years
    ):
        block.append("under_age")
    if flags.recent_surgery or (
        flags.last_surgery_on is not None
        and (today - flags.last_surgery_on).days < params.surgery_months * 365.25 / 12
    ):
        block.append("recent_surgery")
    advise: list[str] = []
    for name, policy in (("metal_implants", params.metal_implants), ("diabetes", params.diabetes)):
        if getattr(flags, name):
            {Policy.BLOCK: block, Policy.ADVISE: advise, Policy.ALLOW: []}[policy].append(name)
    return sorted(block), sorted(advise)


def evaluate_profile(
    profile: DeviceProfile, now: datetime, params: C1 | None = None, open_alerts: OpenAlerts | None = None
) -> list[AlertDecision]:
    """Blocking (and advisory) decisions for the profile; clears when a flag was removed."""
    p = params or C1()
    op = open_alerts or {}
    if not p.enabled:
        return []
    block, advise = contraindication_reasons(
        profile.contraindications, p, local_day(now, profile.tz_offset_min)
    )
    dev = profile.device_id
    out: list[AlertDecision] = []
    for key, reasons, sev in ((BLOCK_KEY, block, Severity.WARNING), (ADVISE_KEY, advise, Severity.INFO)):
        # Health data stays in the profile (read with a health-data grant, audited): the alert, which every
        # viewer and the ops webhook see, says that and how many, never which.
        ev: dict[str, EvidenceValue] = {"contraindications": len(reasons)}
        if reasons:
            what = "blocks sessions" if key == BLOCK_KEY else "asks for advice before use"
            message = f"a contraindication in the user's profile {what} (see the profile: health data)"
            new = raise_unless_open(op, RuleId.C1, sev, dev, key, message, ev)
            out += [d if key != BLOCK_KEY else _blocking(d) for d in new]
        else:
            out += clear_if_open(op, RuleId.C1, dev, key, "no contraindication flagged any more", ev)
    return out


def _blocking(d: AlertDecision) -> AlertDecision:
    return msgspec.structs.replace(d, blocking=True)
