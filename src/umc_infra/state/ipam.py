"""IPv4 addresses for VMs: given ones are checked and claimed, missing ones allocated from the pool.

Every claim is a small document ``ipam/<address>`` in the state backend, created atomically, so two
deployments (on any machine sharing the backend) never get the same address. A deployment keeps its
addresses across runs: index ``i`` of a module always gets the same address.

Every address, given or from the pool, obeys the same site rules (:meth:`Site.problem`): inside the subnet of
``UMC_IP_GATEWAY``/``UMC_IP_NETMASK``, none of its network, broadcast, gateway or DNS server addresses, and
never unspecified, multicast, link-local, reserved, or loopback outside that subnet. A claim document that
cannot be read is logged and its address left alone: nothing is allocated over it, and only a run that gives
exactly that address fails (naming the document).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from umc_infra.blueprint.model import Blueprint
from umc_infra.errors import AddressError, ParamProblem, ParamsError
from umc_infra.settings import Settings, site_subnet
from umc_infra.state.store import StateStore

PREFIX = "ipam"
log = logging.getLogger("umc_infra")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


class Claim(BaseModel):
    """Who holds an address."""

    model_config = ConfigDict(frozen=True)

    deployment: str = Field(min_length=1)
    module: str = Field(min_length=1)
    index: int = Field(ge=0)


class Site(BaseModel):
    """The site's address rules: its subnet (from the gateway and netmask), the gateway and the DNS servers.

    Without a gateway there is no subnet, and only the rules that hold everywhere apply.
    """

    model_config = ConfigDict(frozen=True)

    subnet: ipaddress.IPv4Network | None = None
    gateway: ipaddress.IPv4Address | None = None
    dns_servers: tuple[ipaddress.IPv4Address, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Site:
        """The rules of the site the settings describe (``ip_gateway``, ``ip_netmask``, ``dns_servers``)."""
        subnet = site_subnet(settings.ip_gateway, settings.ip_netmask)
        dns = tuple(ipaddress.IPv4Address(a) for a in settings.dns_servers if ipaddress.ip_address(a).version == 4)
        gateway = ipaddress.IPv4Address(settings.ip_gateway) if subnet is not None else None
        return cls(subnet=subnet, gateway=gateway, dns_servers=dns)

    def problem(self, address: str) -> str | None:
        """Why ``address`` cannot be a VM's address on this site; None if it can.

        The one rule for given addresses and for the pool.
        """
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return f"{address!r} is not an IPv4 address"
        subnet = self.subnet
        if ip in _THIS_NETWORK:
            return f"{ip} is unspecified (0.0.0.0/8 means 'this host', never a VM's address)"
        if ip.is_multicast:
            return f"{ip} is a multicast address (224.0.0.0/4)"
        if ip.is_link_local:
            return f"{ip} is a link-local address (169.254.0.0/16)"
        if ip.is_reserved:
            return f"{ip} is a reserved address (240.0.0.0/4)"
        if ip.is_loopback and (subnet is None or ip not in subnet):
            return f"{ip} is a loopback address" + (f" outside the site's subnet {subnet}" if subnet else "")
        if subnet is not None:
            if ip not in subnet:
                return f"{ip} is outside the site's subnet {subnet}"
            if subnet.prefixlen <= 30 and ip == subnet.network_address:
                return f"{ip} is the network address of {subnet}"
            if subnet.prefixlen <= 30 and ip == subnet.broadcast_address:
                return f"{ip} is the broadcast address of {subnet}"
            if ip == self.gateway:
                return f"{ip} is the site's gateway"
        if ip in self.dns_servers:
            return f"{ip} is one of the site's DNS servers"
        return None

    def allowed(self) -> str:
        """The rules in words (the ``allowed`` of a refused address)."""
        excluded = []
        if self.subnet is not None:
            if self.subnet.prefixlen <= 30:
                excluded += [f"its network address {self.subnet.network_address}",
                             f"its broadcast address {self.subnet.broadcast_address}"]  # fmt: skip
            excluded.append(f"the gateway {self.gateway}")
            where = f"an IPv4 address in the site's subnet {self.subnet}"
        else:
            where = "a unicast IPv4 address (not 0.0.0.0/8, multicast, link-local, reserved or loopback)"
        if self.dns_servers:
            excluded.append("the DNS servers " + ", ".join(str(a) for a in self.dns_servers))
        return where + (" except " + ", ".join(excluded) if excluded else "") + "; each address once, in one module"


def check_given(blueprint: Blueprint, value: Callable[[str], object], *, site: Site) -> None:
    """Refuse given addresses the site does not allow, an address given twice, or given to two modules.

    Call it before anything is claimed or created (provision and plan alike).

    Args:
        blueprint: The blueprint whose modules' ``addresses.given`` are checked.
        value: Resolves a reference (``params.ip_addresses``) to its value.
        site: The site's rules (:meth:`Site.of`).

    Raises:
        ParamsError: Every refused address, named as the user wrote it (``params.ip_addresses.1``), with what
            the site allows.

    """
    problems: list[ParamProblem] = []
    first: dict[str, tuple[str, str]] = {}  # address -> (where it was given first, module)
    for module_name, module in blueprint.modules.items():
        if module.addresses is None or not module.addresses.given:
            continue
        ref = module.addresses.given
        given = value(ref)
        if given is None:
            continue
        items = [(f"{ref}.{i}", a) for i, a in enumerate(given)] if isinstance(given, list | tuple) else [(ref, given)]
        for where, raw in items:
            reason = site.problem(str(raw))
            if reason is None:
                address = str(ipaddress.IPv4Address(str(raw)))
                if address in first:
                    earlier, other = first[address]
                    reason = (
                        f"{address} is given twice (also at {earlier})" if other == module_name else
                        f"{address} is also given to module {other!r} ({earlier}); an address belongs to one VM"
                    )  # fmt: skip
                else:
                    first[address] = (where, module_name)
            if reason is not None:
                problems.append(ParamProblem(field=where, message=reason, allowed=site.allowed()))
    if problems:
        raise ParamsError(problems, blueprint=blueprint.name)


def _pool(pool: str) -> Iterator[ipaddress.IPv4Address]:
    first, _, last = pool.partition("-")
    start, end = int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last))
    for value in range(start, end + 1):
        yield ipaddress.IPv4Address(value)


def _parse(store: StateStore, key: str, data: bytes) -> tuple[str, Claim | None, str]:
    """``(address, claim, "")``, or ``(name, None, why)`` for a document that is not a valid claim (logged)."""
    name = key.rsplit("/", 1)[1]
    try:
        address = str(ipaddress.IPv4Address(name))
        return address, Claim.model_validate_json(data), ""
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors()[:2])
    except ValueError:
        why = f"{name!r} is not an IPv4 address"
    log.warning(
        "address claim %s in %r is unreadable (%s): the address is left alone until the document is repaired "
        "or deleted",
        key, store, why,
    )  # fmt: skip
    return name, None, why


def _read(store: StateStore) -> tuple[dict[str, Claim], dict[str, str]]:
    """Every valid claim by address, and every unreadable claim document (address -> why)."""
    found: dict[str, Claim] = {}
    corrupt: dict[str, str] = {}
    for key in store.list(PREFIX):
        data = store.get(key)
        if data is None:  # released between list and get
            continue
        address, claim, why = _parse(store, key, data)
        if claim is None:
            corrupt[address] = why
        else:
            found[address] = claim
    return found, corrupt


def claims(store: StateStore) -> dict[str, Claim]:
    """Every claimed address and its holder; unreadable claim documents are logged and left out (never raises)."""
    return _read(store)[0]


def _corrupt(store: StateStore, address: str, why: str) -> AddressError:
    return AddressError(
        f"{address} cannot be claimed: its claim document {_key(address)} in {store!r} is unreadable ({why}). "
        f"If no VM uses {address}, delete that document; if one does, rewrite it as "
        '{"deployment": ..., "module": ..., "index": ...}; or give another address',
        step="addresses",
    )


def allocate(
    store: StateStore,
    *,
    pool: str | None,
    deployment: str,
    module: str,
    count: int,
    given: list[str],
    dry_run: bool = False,
    site: Site | None = None,
) -> list[str]:
    """Addresses for ``count`` VMs of ``module`` in ``deployment`` (``dry_run``: which, without claiming).

    Given addresses must have passed :func:`check_given`. Pool addresses the site's rules refuse are skipped
    (``site`` None: no site rules), as are addresses whose claim document is unreadable.

    Raises:
        AddressError: A given address belongs to another deployment or another module of this one, or its
            claim document is unreadable; too few were given; no pool is configured; or the pool is exhausted.

    """
    held, corrupt = _read(store)
    if given:
        if len(given) != count:
            raise AddressError(
                f"{module}: {count} VMs but {len(given)} addresses given; give one per VM or none",
                step="addresses",
            )
        for index, address in enumerate(given):
            claim = Claim(deployment=deployment, module=module, index=index)
            if address in corrupt:
                raise _corrupt(store, address, corrupt[address])
            owner = held.get(address)
            if dry_run:
                if owner is not None:
                    _check_owner(address, owner, claim)
                continue
            _claim(store, held, address, claim)
        return list(given)

    mine = _mine(held, deployment, module)
    if len(mine) < count and pool is None:
        raise AddressError(
            f"{module}: no addresses given and no pool configured; set UMC_IP_POOL (first-last) or pass addresses",
            step="addresses",
        )
    result: list[str] = []
    candidates = _pool(pool) if pool is not None else iter(())
    refused: dict[str, str] = {}
    for index in range(count):
        if index in mine:
            result.append(mine[index])
            continue
        for candidate in candidates:
            address = str(candidate)
            if address in held:
                continue
            why = corrupt.get(address) or (site.problem(address) if site is not None else None)
            if why is not None:
                refused[address] = why
                continue
            claim = Claim(deployment=deployment, module=module, index=index)
            if dry_run or store.create(_key(address), _doc(claim)):
                held[address] = claim
                result.append(address)
                break
        else:
            example = next(iter(refused.values()), "")
            skipped = f" ({len(refused)} of its addresses are not usable, e.g. {example})" if refused else ""
            raise AddressError(f"{module}: the pool {pool} has no free address left{skipped}", step="addresses")
    return result


def _check_owner(address: str, owner: Claim, claim: Claim) -> None:
    if owner.deployment != claim.deployment:
        raise AddressError(
            f"{address} belongs to deployment {owner.deployment!r}; choose another address", step="addresses"
        )
    if owner.module != claim.module:
        raise AddressError(
            f"{address} is held by module {owner.module!r} of this deployment (VM {owner.index + 1}), so module "
            f"{claim.module!r} cannot have it too: give it to one module only, or free it there first",
            step="addresses",
        )


def _claim(store: StateStore, held: dict[str, Claim], address: str, claim: Claim) -> None:
    owner = held.get(address)
    for _ in range(3):  # a claim released between a failed create and the re-read: try again
        if owner is not None:
            break
        if store.create(_key(address), _doc(claim)):
            held[address] = claim
            return
        data = store.get(_key(address))
        if data is not None:
            _, owner, why = _parse(store, _key(address), data)
            if owner is None:
                raise _corrupt(store, address, why)
    if owner is None:
        raise AddressError(f"{address}: its claim keeps appearing and vanishing; run again", step="addresses")
    _check_owner(address, owner, claim)
    if owner.index != claim.index:  # the same VM list in another order: the claim follows the VM
        store.put(_key(address), _doc(claim))
        held[address] = claim


def _mine(held: dict[str, Claim], deployment: str, module: str) -> dict[int, str]:
    """A module's addresses by VM index; while a re-addressed VM holds two claims, the lower address."""
    mine: dict[int, str] = {}
    for address, claim in sorted(held.items(), key=lambda item: int(ipaddress.IPv4Address(item[0])), reverse=True):
        if claim.deployment == deployment and claim.module == module:
            mine[claim.index] = address
    return mine


def held(store: StateStore, *, deployment: str, module: str) -> list[str]:
    """The addresses a module of a deployment holds, in VM order (one per VM)."""
    mine = _mine(claims(store), deployment, module)
    return [mine[index] for index in sorted(mine)]


def release_unused(store: StateStore, *, deployment: str, module: str, keep: Sequence[str]) -> list[str]:
    """Free a module's addresses that are not in ``keep`` (after the apply: re-addressed VMs, a scale-down).

    Returns:
        The freed addresses, in address order.

    """
    keeping = {str(ipaddress.IPv4Address(a)) for a in keep}
    freed = sorted(
        (a for a, c in claims(store).items() if c.deployment == deployment and c.module == module and a not in keeping),
        key=lambda a: int(ipaddress.IPv4Address(a)),
    )
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
