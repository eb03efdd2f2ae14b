"""Identity from a verified JWT, through a real Envoy running envoy/envoy-jwt.yaml.

Envoy's jwt_authn checks an HS256 token against a local JWKS (tests/support/jwt.py) and
forwards its payload to the sidecar; budgets key on its claims. Two worlds, each a sidecar
on the session's Redis behind its own Envoy, each with its configuration in a temporary
folder: `identity` (team wallets, forged headers, an org/team/user hierarchy) and
`discovery` (budgets in team namespaces found by `All` and `Selector` policies). They are
apart because an `All` policy would otherwise discover the identity world's budgets too.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.http import HttpClient, MockOpenAI, Response
from tests.support.jwt import SigningKey, bearer, new_key
from tests.support.procs import ROOT, Envoy, Sidecar

pytestmark = pytest.mark.e2e

BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "In one sentence, what is a token budget?"}],
    "max_tokens": 50,
}

DIMENSIONS = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetDimensions
metadata: {name: dimensions}
spec:
  dimensions:
    # Verified claims, as jwt_authn's payload_in_metadata stores them.
    team: {metadata: {namespace: envoy.filters.http.jwt_authn, path: [jwt_payload, team]}}
    user: {metadata: {namespace: envoy.filters.http.jwt_authn, path: [jwt_payload, sub]}}
    # A header: safe only because envoy-jwt.yaml strips the client's copy and sets it
    # from the `team` claim.
    group: {header: x-team}
"""

# `teams`: each team its own 1,000 tokens a day, keyed by the JWT's `team` claim; the
# header-keyed audit entry shows where a header dimension's spend lands.
WALLETS = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {name: teams, namespace: wallets}
spec:
  budgets:
  - name: per-team
    subject: {team: "*"}
    limit: {unit: Tokens, amount: 1000}
    window: {unit: Day}
    onBudgetExceeded: Block
  - name: per-group
    subject: {group: "*"}
    limit: {unit: Tokens, amount: 1000000}
    window: {unit: Day}
    onBudgetExceeded: Audit
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: teams, namespace: wallets}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: teams}]
  discovery: {from: Same}
"""

# `hierarchy`: the org watches a month of dollars; each team gets 1,000 tokens a week,
# each user 500 a day. The user entry comes first, so the 429 naming the team entry is
# the longest block winning, not the first one listed.
HIERARCHY = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {name: hierarchy, namespace: org}
spec:
  budgets:
  - name: org-monthly
    limit: {unit: USD, amount: "0.001"}
    window: {unit: Month}
    onBudgetExceeded: Audit
  - name: user-daily
    subject: {user: "*"}
    limit: {unit: Tokens, amount: 500}
    window: {unit: Day}
    onBudgetExceeded: Block
  - name: team-weekly
    subject: {team: "*"}
    limit: {unit: Tokens, amount: 1000}
    window: {unit: Week}
    onBudgetExceeded: Block
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: hierarchy, namespace: org}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: hierarchy}]
"""

# Three team namespaces, two labelled. `every-namespace` (All) enforces `discover-all`,
# `labelled-namespaces` (Selector) `discover-selector`; both enforce `discover-both`.
NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: team-red, labels: {budgets: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-blue, labels: {budgets: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-green}
"""

TEAM_WALLET = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {{name: wallet, namespace: team-{team}}}
spec:
  budgets:
  - name: daily
    subject: {{team: {team}}}
    limit: {{unit: Tokens, amount: 1000}}
    window: {{unit: Day}}
    onBudgetExceeded: Block
"""

DISCOVERY_POLICIES = """
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: every-namespace, namespace: platform}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: discover-all}
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: discover-both}
  discovery: {from: All}
---
apiVersion: budgets.extproc.dev/v1alpha1
kind: BudgetPolicy
metadata: {name: labelled-namespaces, namespace: platform}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: discover-selector}
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: discover-both}
  discovery: {from: Selector, selector: {matchLabels: {budgets: enabled}}}
"""

ROUTES = ("teams", "hierarchy", "discover-all", "discover-selector", "discover-both")


def _with_routes(config: str) -> str:
    """envoy-jwt.yaml plus one route per scenario, each named as its policy targets it."""
    anchor = "              - name: openai\n"
    assert anchor in config
    extra = "".join(
        f"              - name: {name}\n"
        f"                match: {{prefix: /{name}/}}\n"
        f"                route: {{cluster: upstream, prefix_rewrite: /, timeout: 120s}}\n"
        for name in ROUTES
    )
    return config.replace(anchor, extra + anchor)


def _naive(config: str) -> str:
    """envoy-jwt.yaml without the strip and without x-team from the claim: the header is
    whatever the client says, as in a config that never thought about it."""
    strip = config.index("          - name: envoy.filters.http.header_mutation\n")
    authn = config.index("          - name: envoy.filters.http.jwt_authn\n")
    claim = "                  - {header_name: x-team, claim_name: team}\n"
    assert claim in config
    return (config[:strip] + config[authn:]).replace(claim, "")


@dataclass
class World:
    config: Path
    redis_url: str
    sidecar: Sidecar
    envoy: Envoy

    def spend(self) -> dict[tuple[str, str], dict[str, str]]:
        """`extproc spend` as an operator runs it: (budget id, subject) to the row by column."""
        out = subprocess.run(
            [sys.executable, "-m", "extproc.cli", "spend", "--config", str(self.config),
             "--redis-url", self.redis_url],
            capture_output=True, text=True, cwd=ROOT, timeout=30, check=True,
        ).stdout  # fmt: skip
        # Columns are two spaces or more apart; a cell may hold one ("not blocked").
        header, *rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]
        return {(row[0], row[1]): dict(zip(header, row, strict=True)) for row in rows}

    def errors(self) -> list[dict[str, object]]:
        return [x for x in self.sidecar.json_lines() if x.get("level") in ("error", "critical")]


def _start(
    folder: Path, documents: dict[str, str], redis_url: str, upstream: MockOpenAI, key: SigningKey
) -> World:
    folder.mkdir()
    for name, text in {"dimensions.yaml": DIMENSIONS, **documents}.items():
        (folder / name).write_text(text)
    sidecar = Sidecar([str(folder)], redis_url=redis_url)
    try:
        envoy = Envoy(
            upstream.port,
            [sidecar.grpc_port],
            transform=_with_routes,
            template="envoy-jwt.yaml",
            values={"JWKS": key.jwks()},
        )
    except BaseException:
        sidecar.stop()
        raise
    return World(folder, redis_url, sidecar, envoy)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return new_key()


@pytest.fixture(scope="module")
def identity(
    tmp_path_factory: pytest.TempPathFactory, e2e_redis: str, upstream: MockOpenAI, key: SigningKey
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("jwt") / "identity"
    world = _start(folder, {"wallets.yaml": WALLETS, "hierarchy.yaml": HIERARCHY}, e2e_redis, upstream, key)
    yield world
    world.envoy.stop()
    world.sidecar.stop()


@pytest.fixture(scope="module")
def discovery(
    tmp_path_factory: pytest.TempPathFactory, e2e_redis: str, upstream: MockOpenAI, key: SigningKey
) -> Iterator[World]:
    documents = {
        "namespaces.yaml": NAMESPACES,
        "policies.yaml": DISCOVERY_POLICIES,
        **{f"{team}.yaml": TEAM_WALLET.format(team=team) for team in ("red", "blue", "green")},
    }
    folder = tmp_path_factory.mktemp("jwt") / "discovery"
    world = _start(folder, documents, e2e_redis, upstream, key)
    yield world
    world.envoy.stop()
    world.sidecar.stop()


@pytest.fixture()
async def identity_client(identity: World, fresh_spend: None) -> AsyncIterator[HttpClient]:
    client = HttpClient("127.0.0.1", identity.envoy.port)
    yield client
    await client.close()


@pytest.fixture()
async def discovery_client(discovery: World, fresh_spend: None) -> AsyncIterator[HttpClient]:
    client = HttpClient("127.0.0.1", discovery.envoy.port)
    yield client
    await client.close()


async def ask(
    client: HttpClient,
    route: str,
    token: str | None,
    usage: tuple[int, int] = (10, 20),
    headers: dict[str, str] | None = None,
) -> Response:
    sent = {"x-mock-usage": f"{usage[0]},{usage[1]}", **(bearer(token) if token else {}), **(headers or {})}
    return await client.post_json(f"/{route}/v1/chat/completions", BODY, sent)


def _with_claims(token: str, **claims: str) -> str:
    """The token with its payload edited and the original signature kept: a forgery."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edited = base64.urlsafe_b64encode(json.dumps({**decoded, **claims}).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


def _blocked_by(response: Response, budget_id: str) -> None:
    assert response.status == 429, response.body
    assert response.headers["x-budget-id"] == budget_id
    assert budget_id in response.json()["error"]["message"]


# --- authentication ------------------------------------------------------------------


async def test_a_valid_token_is_admitted_and_a_missing_or_invalid_one_gets_jwt_authns_local_reply(
    identity_client: HttpClient, identity: World, upstream: MockOpenAI, key: SigningKey
) -> None:
    good = key.token("alice", "a")
    assert (await ask(identity_client, "teams", good)).status == 200
    seen = upstream.stats.requests

    rejected = {
        "missing": (None, 401),
        "signed by another key": (new_key().token("alice", "a"), 401),
        # Beyond the 60 s of clock skew jwt_authn allows by default.
        "expired": (key.token("alice", "a", expires_in=-600), 401),
        "payload edited": (_with_claims(good, team="b"), 401),
        # Authentic but not for us: jwt_authn says 403.
        "another audience": (key.token("alice", "a", aud="someone-else"), 403),
    }
    for case, (token, status) in rejected.items():
        r = await ask(identity_client, "teams", token)
        assert r.status == status, (case, r.body)
        assert r.headers["www-authenticate"].startswith("Bearer"), case

    assert upstream.stats.requests == seen, "a request without a valid token reached the upstream"
    # Each 401 began its ext_proc stream at the response phase; the sidecar let it pass
    # and still serves the next caller.
    assert (await ask(identity_client, "teams", good)).status == 200
    assert identity.sidecar.alive()
    assert identity.errors() == []


async def test_the_bearer_token_is_not_forwarded_upstream(
    identity_client: HttpClient, upstream: MockOpenAI, key: SigningKey
) -> None:
    assert (await ask(identity_client, "teams", key.token("alice", "a"))).status == 200
    assert "authorization" not in upstream.stats.headers[-1]


# --- wallets keyed by a claim ----------------------------------------------------------


async def test_budgets_keyed_by_the_team_claim_block_one_team_and_admit_another(
    identity_client: HttpClient, identity: World, upstream: MockOpenAI, key: SigningKey
) -> None:
    alice, bob = key.token("alice", "a"), key.token("bob", "b")
    assert (await ask(identity_client, "teams", alice, (500, 500))).status == 200
    seen = upstream.stats.requests

    blocked = await ask(identity_client, "teams", alice)

    _blocked_by(blocked, "wallets/teams/per-team")
    assert blocked.headers["x-ratelimit-limit"] == "1000"
    assert upstream.stats.requests == seen
    assert (await ask(identity_client, "teams", bob)).status == 200
    spend = identity.spend()
    assert spend[("wallets/teams/per-team", "team=a")]["SPEND"] == "1000"
    assert spend[("wallets/teams/per-team", "team=b")]["SPEND"] == "30"


async def test_a_forged_team_header_cannot_move_spend_to_another_teams_wallet(
    identity_client: HttpClient, identity: World, upstream: MockOpenAI, key: SigningKey
) -> None:
    alice, bob = key.token("alice", "a"), key.token("bob", "b")
    assert (await ask(identity_client, "teams", bob, (10, 10))).status == 200

    # A member of team a claims to be team b in the header a naive config would read.
    forged = await ask(identity_client, "teams", alice, (100, 100), {"x-team": "b"})
    assert forged.status == 200
    assert upstream.stats.headers[-1]["x-team"] == "a", "Envoy set x-team from the verified claim"
    # A token without a team claim: nothing sets x-team, and the client's copy is gone.
    no_claim = await ask(identity_client, "teams", key.token("mallory"), (100, 100), {"x-team": "b"})
    assert no_claim.status == 200
    assert "x-team" not in upstream.stats.headers[-1]
    # Spent to its limit, team a stays blocked whatever header it sends.
    assert (await ask(identity_client, "teams", alice, (400, 400))).status == 200
    _blocked_by(await ask(identity_client, "teams", alice, headers={"x-team": "b"}), "wallets/teams/per-team")

    spend = identity.spend()
    assert spend[("wallets/teams/per-team", "team=a")]["SPEND"] == "1000"
    assert spend[("wallets/teams/per-group", "group=a")]["SPEND"] == "1000"
    # Team b's wallet holds bob's own 20 tokens and nothing else.
    assert spend[("wallets/teams/per-team", "team=b")]["REMAINING"] == "980"
    assert spend[("wallets/teams/per-group", "group=b")]["SPEND"] == "20"


async def test_behind_a_naive_envoy_a_forged_header_fools_header_keyed_budgets_but_not_claim_keyed_ones(
    identity: World, upstream: MockOpenAI, key: SigningKey, fresh_spend: None
) -> None:
    envoy = Envoy(
        upstream.port,
        [identity.sidecar.grpc_port],
        transform=lambda text: _naive(_with_routes(text)),
        template="envoy-jwt.yaml",
        values={"JWKS": key.jwks()},
    )
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        r = await ask(client, "teams", key.token("alice", "a"), (100, 100), {"x-team": "b"})
    finally:
        await client.close()
        envoy.stop()

    assert r.status == 200
    spend = identity.spend()
    assert spend[("wallets/teams/per-group", "group=b")]["SPEND"] == "200", "the header was believed"
    assert spend[("wallets/teams/per-team", "team=a")]["SPEND"] == "200", "the claim was not moved"
    assert ("wallets/teams/per-team", "team=b") not in spend


# --- hierarchies -----------------------------------------------------------------------


async def test_org_team_and_user_entries_all_apply_and_the_longest_block_names_itself(
    identity_client: HttpClient, identity: World, key: SigningKey
) -> None:
    alice, bob, carol = key.token("alice", "a"), key.token("bob", "a"), key.token("carol", "c")
    logged = len([x for x in identity.sidecar.json_lines() if x.get("event") == "request"])

    assert (await ask(identity_client, "hierarchy", alice, (300, 300))).status == 200
    # Alice is over her day; her team still has room.
    day = await ask(identity_client, "hierarchy", alice)
    _blocked_by(day, "org/hierarchy/user-daily")
    assert 86_400 <= int(day.headers["x-ratelimit-reset"]) <= 86_400 + 900

    assert (await ask(identity_client, "hierarchy", bob, (200, 200))).status == 200
    # Now team a is over its week too: both block alice, the week for longer.
    week = await ask(identity_client, "hierarchy", alice)
    _blocked_by(week, "org/hierarchy/team-weekly")
    assert week.headers["x-ratelimit-limit"] == "1000"
    assert 7 * 86_400 <= int(week.headers["x-ratelimit-reset"]) <= 7 * 86_400 + 7_200
    _blocked_by(await ask(identity_client, "hierarchy", bob), "org/hierarchy/team-weekly")
    # The org entry is over its dollars but only audits: another team's user gets through.
    assert (await ask(identity_client, "hierarchy", carol, (10, 10))).status == 200

    spend = identity.spend()
    tokens = {
        subject: spend[("org/hierarchy/" + entry, subject)]["SPEND"]
        for entry, subject in (
            ("user-daily", "user=alice"),
            ("user-daily", "user=bob"),
            ("user-daily", "user=carol"),
            ("team-weekly", "team=a"),
            ("team-weekly", "team=c"),
        )
    }
    assert tokens == {
        "user=alice": "600",
        "user=bob": "400",
        "user=carol": "20",
        "team=a": "1000",
        "team=c": "20",
    }
    lines = [x for x in identity.sidecar.json_lines() if x.get("event") == "request"][logged:]
    costs = [Decimal(x["gen_ai.usage.cost_usd"]) for x in lines if x.get("route") == "hierarchy"]
    assert len(costs) == 3
    assert Decimal(spend[("org/hierarchy/org-monthly", "-")]["SPEND"]) == sum(costs)
    audits = [
        x
        for x in identity.sidecar.json_lines()
        if x.get("event") == "budget exceeded" and x.get("budget_id") == "org/hierarchy/org-monthly"
    ]
    assert audits and audits[-1]["budget_action"] == "AUDIT"


# --- discovery -------------------------------------------------------------------------


async def test_all_and_selector_policies_find_budgets_in_team_namespaces(
    discovery_client: HttpClient, discovery: World, key: SigningKey
) -> None:
    red, blue, green = (key.token(f"{t}-dev", t) for t in ("red", "blue", "green"))
    for route, token in (
        ("discover-all", red),
        ("discover-all", blue),
        ("discover-all", green),
        ("discover-selector", red),
        ("discover-selector", blue),
        ("discover-selector", green),  # team-green has no `budgets: enabled` label
    ):
        assert (await ask(discovery_client, route, token, (100, 100))).status == 200

    spend = discovery.spend()
    assert spend[("team-red/wallet/daily", "team=red")]["SPEND"] == "400"
    assert spend[("team-blue/wallet/daily", "team=blue")]["SPEND"] == "400"
    assert spend[("team-green/wallet/daily", "team=green")]["SPEND"] == "200"


async def test_a_budget_reachable_through_two_policies_is_charged_once(
    discovery_client: HttpClient, discovery: World, key: SigningKey
) -> None:
    red = key.token("red-dev", "red")
    for usage in ((100, 100), (400, 400)):
        assert (await ask(discovery_client, "discover-both", red, usage)).status == 200

    blocked = await ask(discovery_client, "discover-both", red)

    _blocked_by(blocked, "team-red/wallet/daily")
    assert blocked.headers["x-ratelimit-limit"] == "1000"
    # 1,000 tokens through two policies: counted once (twice would read 2000).
    assert discovery.spend()[("team-red/wallet/daily", "team=red")]["SPEND"] == "1000"
