"""Safety: no network call waits forever.

Issue 18's class of fault 3: a Sentinel Hub token endpoint that accepts and never answers blocked `fetch` for ever.
"""

from __future__ import annotations

import pytest
from fake_sentinelhub import FakeSentinelHub
from test_sentinelhub import _isolated, config_for, fake, fetch  # noqa: F401 (fixtures: _isolated is autouse)

from s2agri.tasks.errors import S2AgriSourceError


def test_a_token_endpoint_that_never_answers_times_out(fake: FakeSentinelHub) -> None:
    """sentinelhub-py asks for tokens without a time-out; s2agri's session bounds every token request."""
    fake.inject("token", delay_s=3.0)
    with pytest.raises(S2AgriSourceError) as error:
        fetch(fake, config=config_for(fake, timeout_s=0.3, max_attempts=2))
    assert str(error.value) == (
        "Sentinel Hub token server did not answer within 0.3 s (2 attempts): retry later or raise the time-out"
    )
    assert fake.calls == {"token": 2}
