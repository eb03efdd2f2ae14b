"""The Kubernetes API test server, seen through the real kubernetes_asyncio client.

`tests/support/kube_api.py` stands in for a kube-apiserver in the tests of
`extproc serve --source kubernetes`; it is only worth having if a real client library
meets there what it meets in a cluster. So every check here goes through
kubernetes_asyncio's own API classes and `watch.Watch`: list and pagination
resourceVersions, watch replay and order, bookmarks, 410 after compaction, the status
subresource, the PATCH content type the library picks by itself, lease optimistic
concurrency, 401/403/413 Status bodies, a stream cut in the middle of an event, and an
API server that goes away and comes back on the same port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube_api import KubeApiServer, serve_kube_api

pytestmark = pytest.mark.integration

GROUP, VERSION = "budgets.extproc.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def budget(name: str, namespace: str = "team-a", **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Budget",
        "metadata": {"name": name, "namespace": namespace},
        **extra,
    }


def status_of(exc: ApiException) -> dict[str, Any]:
    assert exc.body, f"no Status body in {exc!r}"
    return json.loads(exc.body)


async def api_client(kube: KubeApiServer, path: Path, token: str | None = "test-token") -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(
        config_file=str(kube.write_kubeconfig(path, token=token)), client_configuration=cfg
    )
    return client.ApiClient(cfg)


async def collect(
    stream: watch.Watch, until: Callable[[list[dict[str, Any]]], bool] | None = None, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Events until `until(events)` holds or the stream ends; a hang fails the test."""
    events: list[dict[str, Any]] = []

    async def run() -> None:
        async for event in stream:
            events.append(event)
            if until is not None and until(events):
                return

    await asyncio.wait_for(run(), timeout)
    return events


@pytest.fixture(scope="module")
def kube_server() -> Iterator[KubeApiServer]:
    yield from serve_kube_api(bookmark_interval=0.2)


@pytest.fixture()
def kube(kube_server: KubeApiServer) -> KubeApiServer:
    kube_server.reset()
    return kube_server


@pytest.fixture()
async def api(kube: KubeApiServer, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    async with await api_client(kube, tmp_path / "kubeconfig") as api_client_:
        yield api_client_


@pytest.fixture()
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


# --- reads --------------------------------------------------------------------------------


async def test_create_and_list_carry_the_servers_metadata(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    created = await custom.create_namespaced_custom_object(
        GROUP, VERSION, "team-b", "budgets", budget("zeta", "team-b", spec={"limit": 5}, status={"spent": 9})
    )
    await custom.create_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", budget("alpha"))
    meta = created["metadata"]
    assert meta["namespace"] == "team-b" and meta["generation"] == 1 and len(meta["uid"]) == 36
    assert datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00")).tzinfo is not None
    assert "status" not in created  # create cannot set status on a status subresource

    listed = await custom.list_cluster_custom_object(GROUP, VERSION, "budgets", resource_version="0")
    assert listed["kind"] == "BudgetList" and listed["apiVersion"] == API_VERSION
    assert listed["metadata"]["resourceVersion"] == kube.resource_version
    # etcd key order: namespace, then name
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("team-a", "alpha"),
        ("team-b", "zeta"),
    ]
    assert int(meta["resourceVersion"]) < int(listed["items"][0]["metadata"]["resourceVersion"])
    team_b = await custom.list_namespaced_custom_object(GROUP, VERSION, "team-b", "budgets")
    assert [i["metadata"]["name"] for i in team_b["items"]] == ["zeta"]

    with pytest.raises(ApiException) as wrong_ns:
        await custom.create_namespaced_custom_object(
            GROUP, VERSION, "team-a", "budgets", budget("x", "team-b")
        )
    assert wrong_ns.value.status == 400 and status_of(wrong_ns.value)["reason"] == "BadRequest"
    with pytest.raises(ApiException) as exists:
        await custom.create_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", budget("alpha"))
    assert exists.value.status == 409
    assert status_of(exists.value)["reason"] == "AlreadyExists"
    assert status_of(exists.value)["message"] == 'budgets.budgets.extproc.dev "alpha" already exists'
    with pytest.raises(ApiException) as unknown:
        await custom.list_cluster_custom_object(GROUP, VERSION, "nosuchthings")
    assert unknown.value.status == 404 and status_of(unknown.value)["kind"] == "Status"
    with pytest.raises(ApiException) as missing:
        await custom.get_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", "nope")
    assert status_of(missing.value)["details"] == {"name": "nope", "group": GROUP, "kind": "budgets"}


async def test_core_paths_and_discovery(kube: KubeApiServer, api: client.ApiClient):
    core = client.CoreV1Api(api)
    namespaces = await core.list_namespace()
    assert [n.metadata.name for n in namespaces.items] == [
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ]
    # /api/v1/namespaces/NS/configmaps is a collection in NS, not a Namespace
    await core.create_namespaced_config_map(
        "team-a", client.V1ConfigMap(metadata={"name": "catalog"}, data={"a": "1"})
    )
    maps = await core.list_namespaced_config_map("team-a")
    assert [(m.metadata.namespace, m.metadata.name, m.data) for m in maps.items] == [
        ("team-a", "catalog", {"a": "1"})
    ]
    assert (await core.read_namespace("kube-system")).status.phase == "Active"
    # a dict body makes kubernetes_asyncio pick strategic merge for a built-in type: accepted
    patched = await core.patch_namespaced_config_map("catalog", "team-a", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    assert kube.requests[-1].content_type == "application/strategic-merge-patch+json"

    groups = await client.ApisApi(api).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {
        GROUP,
        "coordination.k8s.io",
        "enterpriseagentgateway.solo.io",
        "gateway.networking.k8s.io",
    } <= names
    resources = await client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in resources.resources}
    assert by_name["budgetnamespaces"].namespaced is False and by_name["budgets"].kind == "Budget"
    assert "budgets/status" in by_name
    assert (await client.VersionApi(api).get_code()).major == "1"


async def test_pagination_is_a_consistent_snapshot(kube: KubeApiServer, custom: client.CustomObjectsApi):
    for index in range(5):
        labels = {"tier": "gold" if index % 2 == 0 else "silver"}
        kube.apply(
            {
                **budget(f"b{index}"),
                "metadata": {"name": f"b{index}", "namespace": "team-a", "labels": labels},
            }
        )
    first = await custom.list_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", limit=2)
    assert [i["metadata"]["name"] for i in first["items"]] == ["b0", "b1"]
    assert first["metadata"]["remainingItemCount"] == 3
    token = first["metadata"]["continue"]
    kube.apply(budget("a-late"))  # lands after the snapshot: not on later pages
    second = await custom.list_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", limit=2, _continue=token
    )
    third = await custom.list_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", limit=2, _continue=second["metadata"]["continue"]
    )
    assert [i["metadata"]["name"] for i in second["items"] + third["items"]] == ["b2", "b3", "b4"]
    assert "continue" not in third["metadata"]
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    assert int(kube.resource_version) == int(first["metadata"]["resourceVersion"]) + 1

    gold = await custom.list_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", label_selector="tier=gold"
    )
    assert [i["metadata"]["name"] for i in gold["items"]] == ["b0", "b2", "b4"]
    not_gold = await custom.list_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", label_selector="tier!=gold"
    )
    assert [i["metadata"]["name"] for i in not_gold["items"]] == ["a-late", "b1", "b3"]

    kube.compact()
    with pytest.raises(ApiException) as expired:
        await custom.list_namespaced_custom_object(
            GROUP, VERSION, "team-a", "budgets", limit=2, _continue=token
        )
    assert expired.value.status == 410 and status_of(expired.value)["reason"] == "Expired"


# --- watches ------------------------------------------------------------------------------


async def test_watch_from_a_resource_version_replays_then_follows(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    start = (await custom.list_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets"))["metadata"][
        "resourceVersion"
    ]
    await custom.create_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", budget("b1", spec={"v": 1})
    )
    kube.apply(budget("other", "team-b"))  # another namespace: not on this watch
    async with watch.Watch() as w:
        stream = w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "team-a",
            "budgets",
            resource_version=start,
            timeout_seconds=5,
        )

        async def changes() -> None:
            await kube.wait_for_async(lambda: kube.open_watches == 1)
            await custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                "team-a",
                "budgets",
                "b1",
                {"spec": {"v": 2}},
                _content_type="application/merge-patch+json",
            )
            await custom.delete_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", "b1")

        task = asyncio.create_task(changes())
        events = await collect(stream, lambda evs: evs[-1]["type"] == "DELETED")
        await task
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b1"),
        ("MODIFIED", "b1"),
        ("DELETED", "b1"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert int(start) < versions[0] < versions[1] < versions[2] == int(kube.resource_version)
    assert events[1]["object"]["spec"] == {"v": 2} and events[1]["object"]["metadata"]["generation"] == 2
    assert w.resource_version == str(versions[2])


async def test_watch_without_a_version_starts_with_the_current_objects(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    kube.apply(budget("b1"))
    kube.apply(budget("b2"))
    kube.apply(budget("x", "team-b"))
    async with watch.Watch() as w:
        stream = w.stream(custom.list_cluster_custom_object, GROUP, VERSION, "budgets", timeout_seconds=5)
        events = await collect(stream, lambda evs: len(evs) == 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b1"),
        ("ADDED", "b2"),
        ("ADDED", "x"),
    ]
    assert kube.requests[-1].query["watch"] == "True"  # Python's bool, which Go's ParseBool accepts


async def test_bookmarks_carry_the_current_resource_version(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    kube.apply(budget("b1"))
    async with watch.Watch() as w:
        stream = w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "team-a",
            "budgets",
            resource_version=kube.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=3,
        )

        async def unrelated_change() -> None:
            await kube.wait_for_async(lambda: kube.open_watches == 1)
            kube.apply(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "team-a"}}
            )

        task = asyncio.create_task(unrelated_change())
        events = await collect(stream, lambda evs: len(evs) >= 3)
        await task
    assert {e["type"] for e in events} == {"BOOKMARK"}
    bookmark = events[-1]["object"]
    assert bookmark["kind"] == "Budget" and bookmark["apiVersion"] == API_VERSION
    # the global revision moved (a ConfigMap): bookmarks let the watcher resume past it
    assert bookmark["metadata"]["resourceVersion"] == kube.resource_version
    assert w.resource_version == kube.resource_version

    async with watch.Watch() as w:
        plain = w.stream(
            custom.list_namespaced_custom_object, GROUP, VERSION, "team-a", "budgets", timeout_seconds=1
        )
        assert [e["type"] for e in await collect(plain)] == ["ADDED"]  # no bookmarks unless asked


async def test_watch_from_a_compacted_version_gets_410(kube: KubeApiServer, custom: client.CustomObjectsApi):
    old = kube.apply(budget("b1"))["metadata"]["resourceVersion"]
    kube.apply(budget("b1", spec={"v": 2}))
    kube.compact()
    current = kube.resource_version

    # timeout_seconds disables kubernetes_asyncio's own retry: the ERROR event raises
    async with watch.Watch() as w:
        stream = w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "team-a",
            "budgets",
            resource_version=old,
            timeout_seconds=5,
        )
        with pytest.raises(ApiException) as gone:
            await collect(stream)
    assert gone.value.status == 410
    assert gone.value.reason == f"Expired: too old resource version: {old} ({current})"

    # without it, the library retries once with the same stale version, then raises
    kube.clear_requests()
    async with watch.Watch() as w:
        forever = w.stream(
            custom.list_namespaced_custom_object, GROUP, VERSION, "team-a", "budgets", resource_version=old
        )
        with pytest.raises(ApiException) as again:
            await collect(forever)
    assert again.value.status == 410
    assert [r.query.get("resourceVersion") for r in kube.requests] == [old, old]

    # the wire form, as a real server sends it: HTTP 200, one ERROR line, end of stream
    response = await custom.list_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", watch=True, resource_version=old, _preload_content=False
    )
    async with response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/json"
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = (await response.read()).splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} ({current})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]

    async with watch.Watch() as w:  # from the compaction point itself: fine
        fresh = w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "team-a",
            "budgets",
            resource_version=current,
            timeout_seconds=1,
        )
        assert await collect(fresh) == []


async def test_a_selector_watch_sees_objects_leave_and_enter(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    labelled = {"name": "b1", "namespace": "team-a", "labels": {"tier": "gold"}}
    start = kube.apply({**budget("b1"), "metadata": labelled})["metadata"]["resourceVersion"]
    kube.apply({**budget("b1"), "metadata": {**labelled, "labels": {"tier": "silver"}}})
    kube.apply({**budget("b1"), "metadata": labelled})
    async with watch.Watch() as w:
        stream = w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "team-a",
            "budgets",
            resource_version=start,
            label_selector="tier=gold",
            timeout_seconds=5,
        )
        events = await collect(stream, lambda evs: len(evs) == 2)
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]
    assert events[0]["object"]["metadata"]["labels"] == {"tier": "gold"}  # its last state inside the selector


async def test_a_watch_cut_mid_event_ends_the_clients_stream(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    kube.apply(budget("b1", spec={"v": 1}))
    seen: list[dict[str, Any]] = []
    async with watch.Watch() as w:
        # no timeout_seconds: the library's watch-forever mode, which retries a clean end
        stream = w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, "team-a", "budgets")

        async def read() -> None:
            async for event in stream:
                seen.append(event)

        task = asyncio.create_task(asyncio.wait_for(read(), 5))
        await kube.wait_for_async(lambda: seen)  # the initial ADDED
        kube.apply(budget("b1", spec={"v": 2}))
        assert kube.cut_watches(mid_event=True) == 1
        with pytest.raises(aiohttp.ClientPayloadError):
            await task  # the half line never parses: a client error, not a hang
        last_seen = w.resource_version
    assert kube.open_watches == 0

    # resuming from the last version it fully read neither loses nor repeats the change
    async with watch.Watch() as w:
        resumed = w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "team-a",
            "budgets",
            resource_version=last_seen,
            timeout_seconds=1,
        )
        after = await collect(resumed)
    specs = [e["object"]["spec"]["v"] for e in seen + after]
    assert specs == [1, 2]


async def test_a_clean_cut_makes_the_library_reconnect(kube: KubeApiServer, custom: client.CustomObjectsApi):
    kube.apply(budget("b1", spec={"v": 1}))
    async with watch.Watch() as w:
        stream = w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, "team-a", "budgets")
        first = await collect(stream, lambda evs: len(evs) == 1)
        kube.clear_requests()
        assert kube.cut_watches(mid_event=False) == 1
        kube.apply(budget("b1", spec={"v": 2}))
        second = await collect(stream, lambda evs: len(evs) == 1)
    assert [e["object"]["spec"]["v"] for e in first + second] == [1, 2]
    # it came back from the version it had read, so the change was replayed, not relisted
    assert [r.query.get("resourceVersion") for r in kube.requests] == [
        first[0]["object"]["metadata"]["resourceVersion"]
    ]


async def test_a_cancelled_watch_leaves_nothing_behind(kube: KubeApiServer, custom: client.CustomObjectsApi):
    async with watch.Watch() as w:
        stream = w.stream(
            custom.list_cluster_custom_object, GROUP, VERSION, "budgets", allow_watch_bookmarks=True
        )
        task = asyncio.create_task(collect(stream, timeout=30))
        await kube.wait_for_async(lambda: kube.open_watches == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await kube.wait_for_async(lambda: kube.open_watches == 0, timeout=3)


# --- writes -------------------------------------------------------------------------------


async def test_status_subresource_and_patch_content_types(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    await custom.create_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", budget("b1", spec={"limit": 1})
    )
    merge = "application/merge-patch+json"

    # kubernetes_asyncio sends a dict body as application/json-patch+json unless told: refused
    with pytest.raises(ApiException) as refused:
        await custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "team-a", "budgets", "b1", {"status": {"spent": 1}}
        )
    assert refused.value.status == 400
    assert (
        status_of(refused.value)["message"]
        == "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
    )
    assert kube.requests[-1].content_type == "application/json-patch+json"

    status = await custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "team-a",
        "budgets",
        "b1",
        {"status": {"spent": 1}, "spec": {"limit": 99}},
        _content_type=merge,
    )
    assert kube.requests[-1].content_type == merge
    assert status["status"] == {"spent": 1}
    assert (
        status["spec"] == {"limit": 1} and status["metadata"]["generation"] == 1
    )  # /status changes only status

    main = await custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "team-a",
        "budgets",
        "b1",
        {"spec": {"limit": 2}, "status": {"spent": 50}},
        _content_type=merge,
    )
    assert main["spec"] == {"limit": 2} and main["status"] == {"spent": 1}  # the main resource ignores status
    assert main["metadata"]["generation"] == 2
    assert int(main["metadata"]["resourceVersion"]) > int(status["metadata"]["resourceVersion"])

    same = await custom.patch_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", "b1", {"spec": {"limit": 2}}, _content_type=merge
    )
    assert (
        same["metadata"]["resourceVersion"] == main["metadata"]["resourceVersion"]
    )  # no-op: no new revision

    # a list body is a real JSON patch, and the library picks that type by itself
    listed = await custom.patch_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", "b1", [{"op": "replace", "path": "/spec/limit", "value": 3}]
    )
    assert listed["spec"] == {"limit": 3} and kube.requests[-1].content_type == "application/json-patch+json"

    with pytest.raises(ApiException) as strategic:
        await custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "team-a",
            "budgets",
            "b1",
            {"spec": {}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert strategic.value.status == 415  # not for custom resources, as in a cluster

    stored = kube.get(API_VERSION, "Budget", "b1", "team-a")
    assert stored is not None and stored["spec"] == {"limit": 3} and stored["status"] == {"spent": 1}


async def test_replace_needs_the_current_resource_version(
    kube: KubeApiServer, custom: client.CustomObjectsApi
):
    created = await custom.create_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", budget("b1"))
    updated = await custom.replace_namespaced_custom_object(
        GROUP, VERSION, "team-a", "budgets", "b1", {**created, "spec": {"limit": 1}}
    )
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as stale:
        await custom.replace_namespaced_custom_object(
            GROUP, VERSION, "team-a", "budgets", "b1", {**created, "spec": {"limit": 2}}
        )
    assert stale.value.status == 409 and status_of(stale.value)["reason"] == "Conflict"
    unconditional = budget("b1", spec={"limit": 3})
    with pytest.raises(ApiException) as invalid:
        await custom.replace_namespaced_custom_object(
            GROUP, VERSION, "team-a", "budgets", "b1", unconditional
        )
    assert invalid.value.status == 422  # custom resources refuse an update without resourceVersion


async def test_lease_create_then_stale_replace_conflicts(kube: KubeApiServer, api: client.ApiClient):
    leases = client.CoordinationV1Api(api)
    spec = client.V1LeaseSpec(holder_identity="replica-a", lease_duration_seconds=15)
    created = await leases.create_namespaced_lease(
        "extproc", client.V1Lease(metadata=client.V1ObjectMeta(name="extproc-leader"), spec=spec)
    )
    assert created.metadata.resource_version == kube.resource_version

    created.spec.holder_identity = "replica-b"
    taken = await leases.replace_namespaced_lease("extproc-leader", "extproc", created)
    assert taken.spec.holder_identity == "replica-b"
    assert int(taken.metadata.resource_version) > int(created.metadata.resource_version)

    created.spec.holder_identity = "replica-c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as stale:
        await leases.replace_namespaced_lease("extproc-leader", "extproc", created)
    assert stale.value.status == 409
    assert status_of(stale.value)["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "extproc-leader": '
        "the object has been modified"
    )
    assert (
        await leases.read_namespaced_lease("extproc-leader", "extproc")
    ).spec.holder_identity == "replica-b"
    with pytest.raises(ApiException) as twice:
        await leases.create_namespaced_lease(
            "extproc", client.V1Lease(metadata=client.V1ObjectMeta(name="extproc-leader"), spec=spec)
        )
    assert twice.value.status == 409


async def test_finalizers_hold_a_deletion(kube: KubeApiServer, custom: client.CustomObjectsApi):
    kube.apply(
        {**budget("b1"), "metadata": {"name": "b1", "namespace": "team-a", "finalizers": ["extproc.dev/x"]}}
    )
    marked = await custom.delete_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", "b1")
    assert marked["metadata"]["deletionTimestamp"]  # the object, still there, terminating
    released = await custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "team-a",
        "budgets",
        "b1",
        {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )
    assert released["metadata"]["name"] == "b1"
    assert kube.get(API_VERSION, "Budget", "b1", "team-a") is None


async def test_large_bodies(kube: KubeApiServer, custom: client.CustomObjectsApi):
    big = "x" * (2 * 1024 * 1024)
    kube.apply(budget("big", spec={"blob": big}))  # tests may store what a client could not send
    fetched = await custom.get_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets", "big")
    assert len(fetched["spec"]["blob"]) == len(big)
    with pytest.raises(ApiException) as too_large:
        await custom.create_namespaced_custom_object(
            GROUP, VERSION, "team-a", "budgets", budget("huge", spec={"blob": "y" * (3 * 1024 * 1024)})
        )
    assert too_large.value.status == 413
    assert status_of(too_large.value)["message"] == "Request entity too large: limit is 3145728"


# --- access and availability ----------------------------------------------------------------


async def test_forbidden_namespace_and_cluster_scope(kube: KubeApiServer, custom: client.CustomObjectsApi):
    kube.apply(budget("b1", "team-b"))
    kube.forbid("budgets", namespace="team-b")
    with pytest.raises(ApiException) as denied:
        await custom.list_namespaced_custom_object(GROUP, VERSION, "team-b", "budgets")
    body = status_of(denied.value)
    assert denied.value.status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'budgets.budgets.extproc.dev is forbidden: User "system:serviceaccount:extproc:extproc" cannot list '
        'resource "budgets" in API group "budgets.extproc.dev" in the namespace "team-b"'
    )
    assert (await custom.list_namespaced_custom_object(GROUP, VERSION, "team-a", "budgets"))["items"] == []
    everywhere = await custom.list_cluster_custom_object(GROUP, VERSION, "budgets")
    assert [i["metadata"]["name"] for i in everywhere["items"]] == ["b1"]  # the cluster scope is its own rule
    async with watch.Watch() as w:
        stream = w.stream(
            custom.list_namespaced_custom_object, GROUP, VERSION, "team-b", "budgets", timeout_seconds=2
        )
        with pytest.raises(ApiException) as watch_denied:
            await collect(stream)
    assert watch_denied.value.status == 403  # a Status line where an event was expected: raised

    kube.forbid("budgets")
    with pytest.raises(ApiException) as cluster:
        await custom.list_cluster_custom_object(GROUP, VERSION, "budgets")
    assert status_of(cluster.value)["message"].endswith(
        'in API group "budgets.extproc.dev" at the cluster scope'
    )
    kube.allow("budgets", namespace="team-b")
    assert (
        len((await custom.list_namespaced_custom_object(GROUP, VERSION, "team-b", "budgets"))["items"]) == 1
    )


async def test_a_missing_or_wrong_token_is_401(kube: KubeApiServer, tmp_path: Path):
    for token in (None, "not-the-token"):
        async with await api_client(kube, tmp_path / "kubeconfig", token=token) as anonymous:
            with pytest.raises(ApiException) as denied:
                await client.CustomObjectsApi(anonymous).list_cluster_custom_object(GROUP, VERSION, "budgets")
            assert denied.value.status == 401
            assert status_of(denied.value) == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }
            assert (await client.VersionApi(anonymous).get_code()).git_version.startswith("v1.")


async def test_injected_failures(kube: KubeApiServer, custom: client.CustomObjectsApi):
    kube.fail_next(1, status=503)
    with pytest.raises(ApiException) as unavailable:
        await custom.list_cluster_custom_object(GROUP, VERSION, "budgets")
    assert unavailable.value.status == 503 and status_of(unavailable.value)["reason"] == "ServiceUnavailable"
    assert (await custom.list_cluster_custom_object(GROUP, VERSION, "budgets"))["items"] == []


async def test_stop_and_restart_on_the_same_port(tmp_path: Path):
    with KubeApiServer(bookmark_interval=0.2) as kube:
        port = kube.port
        async with await api_client(kube, tmp_path / "kubeconfig") as api:
            custom = client.CustomObjectsApi(api)
            before = (
                await custom.create_namespaced_custom_object(
                    GROUP, VERSION, "team-a", "budgets", budget("b1")
                )
            )["metadata"]["resourceVersion"]
            async with watch.Watch() as w:
                stream = w.stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    "team-a",
                    "budgets",
                    resource_version=before,
                    timeout_seconds=30,
                )
                watching = asyncio.create_task(collect(stream, timeout=5))
                await kube.wait_for_async(lambda: kube.open_watches == 1)
                kube.stop()  # graceful: the stream ends cleanly
                assert await watching == []

            with pytest.raises(aiohttp.ClientConnectionError):
                await custom.list_cluster_custom_object(GROUP, VERSION, "budgets")
            kube.apply(budget("b2"))  # the store outlives the server, as etcd does

            kube.restart()  # stop() of a stopped server is a no-op; then the same port
            assert kube.port == port
            listed = await custom.list_cluster_custom_object(GROUP, VERSION, "budgets")
            assert [i["metadata"]["name"] for i in listed["items"]] == ["b1", "b2"]
            async with watch.Watch() as w:
                resumed = w.stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    "team-a",
                    "budgets",
                    resource_version=before,
                    timeout_seconds=1,
                )
                events = await collect(resumed)
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b2")]
    assert not kube.running
