"""Publish the dashboards to a running Grafana with grafana-client: idempotent (stable uids, overwrite),
into one folder that is created when missing; optionally the TimescaleDB datasource as well."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from cloud.dashboards.catalog import rendered
from cloud.dashboards.sdk import DATASOURCE_TYPE, DATASOURCE_UID

FOLDER_UID = "microfleet"
FOLDER_TITLE = "microfleet"


class PublishError(Exception):
    """Grafana refused or could not be reached; the message says what to check."""


@dataclass(frozen=True, slots=True)
class Published:
    uid: str
    url: str
    version: int


def connect(url: str, token: str | None, user: str, password: str) -> Any:
    credential: str | tuple[str, str] = token if token else (user, password)
    return GrafanaApi.from_url(url, credential=credential)


def ensure_folder(api: Any, uid: str = FOLDER_UID, title: str = FOLDER_TITLE) -> str:
    try:
        api.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(title, uid=uid)
    return uid


def datasource_payload(database_url: str) -> dict[str, object]:
    """Grafana's PostgreSQL datasource for a libpq URL (the same one the cloud services use)."""
    u = urlsplit(database_url)
    return {
        "uid": DATASOURCE_UID,
        "name": "microfleet TimescaleDB",
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "url": f"{u.hostname or 'localhost'}:{u.port or 5432}",
        "user": u.username or "postgres",
        "jsonData": {
            "database": u.path.lstrip("/") or "microfleet",
            "sslmode": "disable",
            "postgresVersion": 1600,
            "timescaledb": True,
        },
        "secureJsonData": {"password": u.password or ""},
    }


def ensure_datasource(api: Any, database_url: str) -> None:
    payload = datasource_payload(database_url)
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.datasource.create_datasource(payload)
    else:
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, payload)


def publish(api: Any, *, folder_uid: str = FOLDER_UID, database_url: str | None = None) -> list[Published]:
    """Create or overwrite every dashboard in the folder. Running it twice changes nothing but versions."""
    try:
        ensure_folder(api, folder_uid)
        if database_url is not None:
            ensure_datasource(api, database_url)
        results = []
        for text in rendered().values():
            dashboard = json.loads(text)
            dashboard["id"] = None
            reply = api.dashboard.update_dashboard(
                {
                    "dashboard": dashboard,
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "microfleet dashboards publish",
                }
            )
            results.append(
                Published(dashboard["uid"], str(reply.get("url", "")), int(reply.get("version", 0)))
            )
        return results
    except GrafanaException as exc:
        raise PublishError(
            f"Grafana answered {exc.status_code}: {exc.message}. Check the URL and the credentials "
            "(an admin or editor token with --token, or --user/--password)."
        ) from exc
    except OSError as exc:
        raise PublishError(
            f"cannot reach Grafana: {exc}. Is it running (docker-compose up grafana)?"
        ) from exc
