"""X-Robots-Tag opt-out, with img2dataset's semantics so the same sites are honoured.

Each header value is either `d1, d2` (applies to every agent) or `agent: d1, d2` (applies when
`agent` is our user-agent token, compared case-insensitively). A site opts out when an applicable
value carries one of the disallowed directives.
"""

from __future__ import annotations

from collections.abc import Iterable


def opt_out_directive(
    header_values: Iterable[str], user_agent_token: str | None, disallowed: Iterable[str]
) -> str | None:
    """The first disallowed directive that applies to us, or None when the headers allow use."""
    disallowed_set = {d.strip().lower() for d in disallowed}
    token = user_agent_token.strip().lower() if user_agent_token else None
    for value in header_values:
        agent, sep, directives = value.partition(":")
        if not sep:
            agent, directives = "", value
        agent = agent.strip().lower()
        if agent and agent != token:
            continue
        for directive in directives.split(","):
            if directive.strip().lower() in disallowed_set:
                return f"{agent}: {directive.strip()}" if agent else directive.strip()
    return None
