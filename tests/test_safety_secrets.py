"""Safety: secrets stay out of files.

Issue 18's class of fault 6: `?password=` in a PostgreSQL URI and `user:pass@` in a Sentinel Hub
`token_url` landed in region.json, failed.json, report.html and logs. URIs with secrets are refused
before they reach configs, reports or logs, and masked in messages.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from s2agri.tasks.errors import S2AgriInputError
from s2agri.tasks.secrets import redact_uri, uri_secret
from s2agri.tasks.sources.sentinelhub import sentinelhub_config
from s2agri.workflows import cli
from s2agri.workflows.config import validation_problems
from s2agri.workflows.region import RegionConfig


@pytest.mark.parametrize(
    ("uri", "where"),
    [
        ("postgresql://u:pw@h/db?table=t", "password in the user part (user:password@)"),
        ("postgresql://u@h/db?table=t&password=pw", "query parameter 'password'"),
        ("https://h/token?client_secret=s", "query parameter 'client_secret'"),
        ("https://user:pass@services.example/oauth/token", "password in the user part (user:password@)"),
        ("postgresql://u@h/db?table=t", None),
        ("https://h/stac?token=", None),  # an empty value is no secret
        ("/data/parcels.gpkg", None),
    ],
)
def test_secrets_are_found(uri: str, where: str | None) -> None:
    assert uri_secret(uri) == where


def test_redaction_masks_every_secret() -> None:
    assert redact_uri("postgresql://u:pw@h:5432/db?table=t&password=x") == (
        "postgresql://u:***@h:5432/db?table=t&password=***"
    )
    assert redact_uri("https://h/a?b=1") == "https://h/a?b=1"


@pytest.mark.parametrize(
    "config",
    [
        {"parcels": {"uri": "postgresql://u@h/db?table=t&password=hunter2"}},
        {"export": {"postgis": {"uri": "postgresql://u@h/db?table=t&password=hunter2"}}},
        {"source": {"kind": "sentinelhub", "token_url": "https://u:hunter2@h/token"}},
        {"source": {"kind": "sentinelhub", "base_url": "https://h?access_token=hunter2"}},
        {"source": {"kind": "stac", "catalog": "https://u:hunter2@h/stac"}},
    ],
)
def test_region_configs_refuse_secrets(config: dict) -> None:
    with pytest.raises(ValidationError, match="holds a secret") as error:
        RegionConfig.model_validate(config)
    assert "hunter2" not in validation_problems(error.value)  # the one line the command line prints


def test_sentinelhub_urls_with_secrets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SH_CLIENT_ID", "id")
    monkeypatch.setenv("SH_CLIENT_SECRET", "secret")
    with pytest.raises(S2AgriInputError, match="holds a secret") as error:
        sentinelhub_config(token_url="https://user:hunter2@h/token")
    assert "hunter2" not in str(error.value) and "user:***@" in str(error.value)


def test_fetch_refuses_a_parcels_uri_with_a_password_parameter(tmp_path, capsys) -> None:
    out = tmp_path / "box"
    code = cli.main(
        [
            "fetch", str(out), "--bbox", "450000,5080000,450400,5080400", "--crs", "32633",
            "--parcels", "postgresql://u@127.0.0.1/db?table=t&password=hunter2",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "holds a secret" in err and "hunter2" not in err and not out.exists()
