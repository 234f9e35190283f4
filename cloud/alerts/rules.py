"""The alert rules of issue 3, pure: telemetry, history and profile in, `AlertDecision`s out.

Entry points (no I/O here; cloud/alerts/engine.py feeds them and stores the decisions):
- `evaluate_in_session(message, state, params, now)`: O1, O6, O7, T1, T5, T7, T8 as telemetry arrives;
- `evaluate_history(session_end, history, profile, params, now)`: O2, O3, O4, O5, T2, T3, T4, T6;
- `evaluate_sliding(history, profile, params, now)`: clears of O5, T2, T4 as days pass with no session;
- `evaluate_profile(profile, now, params)`: C1, the contraindication gate (a blocking decision);
- `resolve_rule_params(profile, model_overrides, device_overrides)`: the parameters they all read.
See cloud/alerts/README.md for every rule, its defaults and their sources.
"""

from __future__ import annotations

from cloud.alerts.decision import NOTICE, Action, AlertDecision
from cloud.alerts.history import evaluate_history, evaluate_sliding
from cloud.alerts.inputs import Contraindications, DeviceHistory, DeviceProfile, SessionRecord, local_day
from cloud.alerts.insession import SessionMismatchError, SessionState, evaluate_in_session
from cloud.alerts.params import (
    MODEL_OVERRIDES,
    ParamsError,
    Phase,
    Policy,
    ProtocolProfile,
    RuleId,
    RuleParams,
    Setting,
    Severity,
    defaults_for,
    resolve_rule_params,
)
from cloud.alerts.profile import evaluate_profile

HISTORY_RULES = (RuleId.O2, RuleId.O3, RuleId.O4, RuleId.O5, RuleId.T2, RuleId.T3, RuleId.T4, RuleId.T6)
IN_SESSION_RULES = (RuleId.O1, RuleId.O6, RuleId.O7, RuleId.T1, RuleId.T5, RuleId.T7, RuleId.T8)
PROFILE_RULES = (RuleId.C1,)

__all__ = [
    "HISTORY_RULES",
    "IN_SESSION_RULES",
    "MODEL_OVERRIDES",
    "NOTICE",
    "PROFILE_RULES",
    "Action",
    "AlertDecision",
    "Contraindications",
    "DeviceHistory",
    "DeviceProfile",
    "ParamsError",
    "Phase",
    "Policy",
    "ProtocolProfile",
    "RuleId",
    "RuleParams",
    "SessionMismatchError",
    "SessionRecord",
    "SessionState",
    "Setting",
    "Severity",
    "defaults_for",
    "evaluate_history",
    "evaluate_in_session",
    "evaluate_profile",
    "evaluate_sliding",
    "local_day",
    "resolve_rule_params",
]
