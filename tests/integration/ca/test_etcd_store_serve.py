"""``s2s-ca init/serve --store etcd://...``: two CA replicas on one real etcd serve the same agent;
TLS to etcd (and its rejecting twins); bad store options are clear errors with exit codes."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ca_harness import TRUST_DOMAIN, Agent, ca_client, csr_pem, new_key, start_ca, stop_ca

from s2s.ca.app import CaServer, ServeOptions
from s2s.ca.bootstrap import init_trust_domain
from s2s.ca.store_config import StoreSettings, open_ca_store
from s2s.cli.ca import main
from s2s.core.errors import InvalidConfig, StoreError
from s2s.testing_etcd import EtcdServer
from s2s.testing_etcd_tls import EtcdTlsFiles


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> EtcdTlsFiles:
    return EtcdTlsFiles.create(tmp_path_factory.mktemp("etcd-tls-files"))


@pytest.fixture(scope="module")
def etcd_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_files: EtcdTlsFiles
) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd-tls") / "data", tls=tls_files) as server:
        yield server


def domain(request: pytest.FixtureRequest) -> str:
    """A trust domain of its own per test (they share one etcd)."""
    digest = hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    return f"t{digest}.example.org"


def copy_kek(source: Path, target: Path) -> None:
    target.mkdir(mode=0o700)
    shutil.copy2(source / "kek.bin", target / "kek.bin")


async def test_two_replicas_on_one_etcd_serve_the_same_agent(
    etcd: EtcdServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    td = domain(request)
    store_url = f"{etcd.url}/{td}"
    argv = ["--data-dir", str(tmp_path / "a"), "init", "--trust-domain", td, "--store", store_url]
    assert await asyncio.to_thread(main, argv) == 0
    assert not (tmp_path / "a" / "s2s.db").exists()  # the store is etcd, only the KEK is local
    copy_kek(tmp_path / "a", tmp_path / "b")
    settings = StoreSettings(url=etcd.url, trust_domain=td)
    first = await start_ca(tmp_path / "a", store=settings, replica_name="ca-a")
    second = await start_ca(tmp_path / "b", store=settings, replica_name="ca-b")
    try:
        async with ca_client(first[0]) as ca_a, ca_client(second[0]) as ca_b:
            agent = await ca_a.attest()
            entry = await ca_a.admin_call(
                "POST",
                "/v1/entries",
                {"spiffe_id": f"spiffe://{td}/billing", "parent_id": agent.spiffe_id,
                 "selectors": ["unix:uid:1000"]},
            )  # fmt: skip
            # The same agent, its SVID from replica a, calls replica b.
            via_b = Agent(agent.spiffe_id, agent.key, agent.chain_pem, agent.bundle, ca_b)
            ca_b.agents.append(via_b)
            for caller in (agent, via_b):
                status, body = await caller.call(
                    "POST",
                    "/v1/agent/x509",
                    json={"requests": [{"entry_id": entry["id"], "csr": csr_pem(new_key())}]},
                )
                assert status == 200, body
                assert body["results"][0]["spiffe_id"] == f"spiffe://{td}/billing"
            status, listed = await via_b.call("GET", "/v1/agent/entries")
            assert status == 200
            assert [e["id"] for e in listed["entries"]] == [entry["id"]]
            # Both replicas publish one bundle: the root and both replicas' JWT keys.
            await first[0].authority.refresh_bundle()
            bundle = await second[0].authority.refresh_bundle()
            assert len(bundle.x509_authorities) == 1
            assert len(bundle.jwt_authorities) == 2
            owners = {a.owner for a in await ca_b.server.authority.list_authorities()}
            assert {"ca-a", "ca-b"} <= owners
            # The rejecting twin: an agent evicted through replica a is refused by replica b.
            await ca_a.admin_call("POST", "/v1/agents/evict", {"spiffe_id": agent.spiffe_id})
            deadline = asyncio.get_running_loop().time() + 10
            while (status := (await via_b.call("GET", "/v1/agent/entries"))[0]) == 200:
                assert asyncio.get_running_loop().time() < deadline, "replica b still serves it"
                await asyncio.sleep(0.05)  # b's snapshot follows the store
            assert status == 403
    finally:
        await stop_ca(*second)
        await stop_ca(*first)


async def test_serve_finds_the_only_registered_trust_domain(tmp_path: Path, capsys: Any) -> None:
    with EtcdServer(tmp_path / "etcd") as etcd:
        with pytest.raises(InvalidConfig, match="no trust domain is registered"):
            await StoreSettings(url=etcd.url).etcd_trust_domain()
        for td in ("one.example.org", "two.example.org"):
            argv = ["--data-dir", str(tmp_path / td), "init", "--trust-domain", td]
            assert await asyncio.to_thread(main, [*argv, "--store", etcd.url]) == 0
        only_kek = StoreSettings(url=etcd.url)  # no trust domain named: two are registered
        with pytest.raises(InvalidConfig, match="several"):
            await open_ca_store(tmp_path / "one.example.org", only_kek)
        server, task, stop = await start_ca(
            tmp_path / "one.example.org",
            store=StoreSettings(url=etcd.url, trust_domain="one.example.org"),
        )
        await stop_ca(server, task, stop)
    with EtcdServer(tmp_path / "etcd2") as etcd:  # one registered: found without naming it
        argv = ["--data-dir", str(tmp_path / "x"), "init", "--trust-domain", "x.example.org"]
        assert await asyncio.to_thread(main, [*argv, "--store", etcd.url]) == 0
        server, task, stop = await start_ca(tmp_path / "x", store=StoreSettings(url=etcd.url))
        try:
            assert server.authority.trust_domain.name == "x.example.org"
        finally:
            await stop_ca(server, task, stop)


async def test_serve_refuses_an_uninitialized_prefix_and_a_missing_kek(
    etcd: EtcdServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    td = domain(request)
    (tmp_path / "d").mkdir(mode=0o700)
    options = ServeOptions(
        data_dir=tmp_path / "d",
        listen="127.0.0.1:0",
        store=StoreSettings(url=f"{etcd.url}/{td}"),
    )
    with pytest.raises(InvalidConfig, match=r"kek\.bin"):
        await CaServer.open(options)
    await init_trust_domain(tmp_path / "other", "other-" + td)  # a KEK, but etcd holds no root
    copy_kek(tmp_path / "other", tmp_path / "e")
    options = ServeOptions(
        data_dir=tmp_path / "e", listen="127.0.0.1:0", store=StoreSettings(url=f"{etcd.url}/{td}")
    )
    with pytest.raises(InvalidConfig, match="not initialized"):
        await CaServer.open(options)


async def test_init_twice_on_one_prefix_is_a_conflict(
    etcd: EtcdServer, tmp_path: Path, request: pytest.FixtureRequest, capsys: Any
) -> None:
    td = domain(request)
    args = ["init", "--trust-domain", td, "--store", f"{etcd.url}/{td}"]
    assert await asyncio.to_thread(main, ["--data-dir", str(tmp_path / "a"), *args]) == 0
    assert await asyncio.to_thread(main, ["--data-dir", str(tmp_path / "b"), *args]) == 5
    assert "already initialized" in capsys.readouterr().err
    assert not (tmp_path / "b" / "kek.bin").exists()  # the refused init leaves no stray KEK


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--store", "redis://127.0.0.1:1/x.org"], "etcd://"),
        (["--etcd-ca", "/nonexistent.pem"], "need --store"),
        (["--store", "etcd://127.0.0.1:1/a.org", "--trust-domain", "b.org"], "conflicting"),
        (["--store", "etcd://127.0.0.1:1/a.org", "--etcd-cert", "/x.pem"], "--etcd-ca"),
    ],
)
def test_bad_store_options_are_clear_errors(
    tmp_path: Path, argv: list[str], message: str, capsys: Any
) -> None:
    (tmp_path / "d").mkdir()
    code = main(["--data-dir", str(tmp_path / "d"), "serve", "--listen", "127.0.0.1:0", *argv])
    assert code == 1
    assert message in capsys.readouterr().err


async def test_serve_over_tls_etcd_and_its_rejecting_twins(
    etcd_tls: EtcdServer, tls_files: EtcdTlsFiles, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    td = domain(request)
    url = f"{etcd_tls.url}/{td}"
    tls = {"etcd_ca": tls_files.ca, "etcd_cert": tls_files.client_cert,
           "etcd_key": tls_files.client_key}  # fmt: skip
    argv = ["--data-dir", str(tmp_path / "a"), "init", "--trust-domain", td, "--store", url]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in tls.items()]
    assert await asyncio.to_thread(main, [*argv, *flags]) == 0
    server, task, stop = await start_ca(tmp_path / "a", store=StoreSettings(url=url, **tls))
    try:
        async with ca_client(server) as ca:
            agent = await ca.attest()
            assert agent.spiffe_id.startswith(f"spiffe://{td}/s2s/agent/")
    finally:
        await stop_ca(server, task, stop)
    twins: list[dict[str, Path]] = [
        {},  # plain gRPC to a TLS etcd
        {"etcd_ca": tls_files.other_ca},  # etcd's certificate is from another CA
        {"etcd_ca": tls_files.ca},  # no client certificate, which etcd requires
        {"etcd_ca": tls_files.ca, "etcd_cert": tls_files.other_client_cert,
         "etcd_key": tls_files.other_client_key},  # a client certificate etcd does not trust
    ]  # fmt: skip
    for twin in twins:
        options = ServeOptions(
            data_dir=tmp_path / "a", listen="127.0.0.1:0", store=StoreSettings(url=url, **twin)
        )
        with pytest.raises(StoreError):
            await CaServer.open(options)


def test_toml_config_names_the_store(tmp_path: Path, tls_files: EtcdTlsFiles) -> None:
    from s2s.cli.ca_process import load_config_file  # noqa: PLC0415

    path = tmp_path / "ca.toml"
    path.write_text(
        f'store = "etcd://127.0.0.1:2379/{TRUST_DOMAIN}"\n'
        f'etcd_ca = "{tls_files.ca}"\netcd_cert = "{tls_files.client_cert}"\n'
        f'etcd_key = "{tls_files.client_key}"\n'
    )
    values, _ = load_config_file(path)
    assert values["store"].startswith("etcd://")
    assert values["etcd_ca"] == str(tls_files.ca)
    path.write_text('store = "etcd://127.0.0.1:2379"\netcd_bogus = "x"\n')
    with pytest.raises(InvalidConfig, match="etcd_bogus"):
        load_config_file(path)


async def test_rotate_root_with_etcd_down_fails_loudly_then_resumes(
    tmp_path: Path, capsys: Any
) -> None:
    with EtcdServer(tmp_path / "etcd") as etcd:
        url = f"{etcd.url}/{TRUST_DOMAIN}"
        argv = ["--data-dir", str(tmp_path / "a"), "init", "--trust-domain", TRUST_DOMAIN]
        assert await asyncio.to_thread(main, [*argv, "--store", url]) == 0
        server, task, stop = await start_ca(tmp_path / "a", store=StoreSettings(url=url))
        sock = ["--socket", str(server.options.admin_socket), "rotate-root", "--step"]
        try:
            assert await asyncio.to_thread(main, sock) == 0  # prepared
            capsys.readouterr()
            etcd.stop()
            assert await asyncio.to_thread(main, sock) == 3  # unavailable: nothing done
            assert "etcd" in capsys.readouterr().err
            etcd.start()
            assert await asyncio.to_thread(main, sock) == 0  # resumes: no agents, so activated
            assert "[activated]" in capsys.readouterr().out
            roots = await server.authority.list_authorities()
            states = sorted(a.state.value for a in roots if a.kind.value == "x509-root")
            assert states == ["active", "old"]
        finally:
            await stop_ca(server, task, stop)
