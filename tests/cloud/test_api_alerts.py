"""The alerts routes over real HTTP: viewers read, operators act, every action is audited with its actor."""

from __future__ import annotations

from cloud.api.tokens import Role
from cloud.config import CloudConfig
from tests.cloud.test_api_support import execute, migrated_database, mint_all, serve

SEED = (
    "INSERT INTO alerts (device_id, rule_id, episode_key, severity, first_seen, last_seen, message, notice_text)"
    " VALUES (%s, %s, %s, %s, now(), now(), %s, %s)"
)


def test_list_ack_snooze_resolve_with_roles_and_audit() -> None:
    with migrated_database() as dsn:
        execute(
            dsn,
            SEED,
            [
                ("dev-1", "O3", "2026-11-26", "warning", "3 sessions today", "Take a rest day tomorrow."),
                ("dev-2", "T7", "s-9", "critical", "current above model cap", "Stop and contact support."),
            ],
        )
        tokens = mint_all(dsn)
        with serve(CloudConfig(database_url=dsn)) as api:
            viewer, operator = api.client(tokens[Role.VIEWER]), api.client(tokens[Role.OPERATOR])
            listed = viewer.get("/alerts").json()
            rows = listed["items"] if isinstance(listed, dict) else listed
            assert {a["rule_id"] for a in rows} == {"O3", "T7"}
            o3 = next(a for a in rows if a["rule_id"] == "O3")
            assert viewer.post(f"/alerts/{o3['id']}/ack", json={"reason": "x"}).status_code == 403
            assert api.client().get("/alerts").status_code == 401

            acked = operator.post(f"/alerts/{o3['id']}/ack", json={"reason": "calling the user"})
            assert acked.status_code == 200, acked.text
            assert acked.json()["state"] == "acknowledged"
            snoozed = operator.post(f"/alerts/{o3['id']}/snooze", json={"until": "2030-01-01T00:00:00Z"})
            assert snoozed.status_code == 200 and snoozed.json()["state"] == "snoozed"
            resolved = operator.post(f"/alerts/{o3['id']}/resolve", json={"reason": "user informed"})
            assert resolved.status_code == 200 and resolved.json()["state"] == "resolved"
            # a resolved alert cannot be acknowledged again
            assert operator.post(f"/alerts/{o3['id']}/ack", json={}).status_code == 409
            assert viewer.get("/alerts/999999").status_code == 404

            detail = viewer.get(f"/alerts/{o3['id']}").json()
            trail = detail.get("transitions") or detail.get("audit") or []
            assert [(t["from_state"], t["to_state"]) for t in trail] == [
                ("open", "acknowledged"),
                ("acknowledged", "snoozed"),
                ("snoozed", "resolved"),
            ], trail
            assert all(t["actor"] == "test-operator" for t in trail)
