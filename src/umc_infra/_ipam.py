"""IPv4 addresses for VMs: given ones are claimed, missing ones allocated from the pool.

Every claim is a small document ``ipam/<address>`` in the state backend, created atomically, so two
deployments (on any machine sharing the backend) never get the same address. A deployment keeps its
addresses across runs: index ``i`` of a module always gets the same address.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict

from umc_infra._errors import AddressError
from umc_infra._store import StateStore

PREFIX = "ipam"


class Claim(BaseModel):
    """Who holds an address."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    module: str
    index: int


def _pool(pool: str) -> Iterator[ipaddress.IPv4Address]:
    first, _, last = pool.partition("-")
    start, end = int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last))
    for value in range(start, end + 1):
        yield ipaddress.IPv4Address(value)


def claims(store: StateStore) -> dict[str, Claim]:
    """Every claimed address and its holder."""
    found = {}
    for key in store.list(PREFIX):
        data = store.get(key)
        if data is not None:
            found[key.rsplit("/", 1)[1]] = Claim.model_validate_json(data)
    return found


def allocate(
    store: StateStore,
    *,
    pool: str | None,
    deployment: str,
    module: str,
    count: int,
    given: list[str],
    dry_run: bool = False,
) -> list[str]:
    """Addresses for ``count`` VMs of ``module`` in ``deployment`` (``dry_run``: which, without claiming).

    Raises:
        AddressError: A given address belongs to another deployment, too few were given,
            no pool is configured, or the pool is exhausted.

    """
    held = claims(store)
    if given:
        if len(given) != count:
            raise AddressError(
                f"{module}: {count} VMs but {len(given)} addresses given; give one per VM or none",
                step="addresses",
            )
        for index, address in enumerate(given):
            owner = held.get(address)
            if dry_run and (owner is None or owner.deployment == deployment):
                continue
            _claim(store, held, address, Claim(deployment=deployment, module=module, index=index))
        return list(given)

    mine = {c.index: a for a, c in held.items() if c.deployment == deployment and c.module == module}
    if len(mine) < count and pool is None:
        raise AddressError(
            f"{module}: no addresses given and no pool configured; set UMC_IP_POOL (first-last) or pass addresses",
            step="addresses",
        )
    result: list[str] = []
    candidates = _pool(pool) if pool is not None else iter(())
    for index in range(count):
        if index in mine:
            result.append(mine[index])
            continue
        for candidate in candidates:
            address = str(candidate)
            if address in held:
                continue
            if dry_run:
                held[address] = Claim(deployment=deployment, module=module, index=index)
                result.append(address)
                break
            if store.create(_key(address), _doc(Claim(deployment=deployment, module=module, index=index))):
                held[address] = Claim(deployment=deployment, module=module, index=index)
                result.append(address)
                break
        else:
            raise AddressError(f"{module}: the pool {pool} has no free address left", step="addresses")
    return result


def _claim(store: StateStore, held: dict[str, Claim], address: str, claim: Claim) -> None:
    owner = held.get(address)
    if owner is None and store.create(_key(address), _doc(claim)):
        held[address] = claim
        return
    owner = owner or claims(store).get(address)
    if owner is not None and owner.deployment != claim.deployment:
        raise AddressError(
            f"{address} belongs to deployment {owner.deployment!r}; choose another address", step="addresses"
        )


def held(store: StateStore, *, deployment: str, module: str) -> list[str]:
    """The addresses a module of a deployment holds, in VM order."""
    mine = sorted((c.index, a) for a, c in claims(store).items() if c.deployment == deployment and c.module == module)
    return [address for _, address in mine]


def release_extra(store: StateStore, *, deployment: str, module: str, keep: int) -> list[str]:
    """Free a module's addresses beyond its first ``keep`` VMs (after a scale-down)."""
    freed = [
        a for a, c in claims(store).items() if c.deployment == deployment and c.module == module and c.index >= keep
    ]
    for address in freed:
        store.delete(_key(address))
    return freed


def release(store: StateStore, *, deployment: str) -> list[str]:
    """Free every address a deployment holds; returns them."""
    freed = [a for a, c in claims(store).items() if c.deployment == deployment]
    for address in freed:
        store.delete(_key(address))
    return freed


def _key(address: str) -> str:
    return f"{PREFIX}/{ipaddress.IPv4Address(address)}"


def _doc(claim: Claim) -> bytes:
    return json.dumps(claim.model_dump()).encode()
