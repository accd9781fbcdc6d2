"""References: the grammar (parsed once), each kind's check and resolution, and the order of modules."""

import itertools
import re
from typing import Annotated

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, SecretStr, TypeAdapter

from umc_infra import BlueprintError, UmcInfraError
from umc_infra.blueprint.model import Blueprint, RefText
from umc_infra.blueprint.references import (
    KINDS,
    Format,
    Literal_,
    Reference,
    Values,
    check_reference,
    dependency_order,
    is_secret,
    needs,
    parse,
    resolve,
    resolve_all,
)
from umc_infra.errors import UnresolvedReference
from umc_infra.settings import SITE_FIELDS, Settings

# What the YAML schema accepted before references were parsed (a pydantic pattern: Rust regex, whole string).
OLD_PATTERN = (
    r"^(?:deployment|params\.[a-z][a-z0-9_]*|secrets\.[a-z][a-z0-9_]*|site\.[a-z][a-z0-9_]*"
    r"|addresses\.[a-z][a-z0-9_]*|modules\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*|hosts\.[a-z][a-z0-9_]*\.ips)"
    r"(?:\[\d{1,3}\])?$"
)
OLD = TypeAdapter(Annotated[str, Field(pattern=OLD_PATTERN)])
NEW = TypeAdapter(RefText)


# -- the grammar ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "name", "sub", "index"),
    [
        ("deployment", "deployment", None, None, None),
        ("deployment[0]", "deployment", None, None, 0),
        ("params.cpu", "params", "cpu", None, None),
        ("params.ip_addresses[19]", "params", "ip_addresses", None, 19),
        ("secrets.db_password", "secrets", "db_password", None, None),
        ("site.datacenter", "site", "datacenter", None, None),
        ("addresses.web", "addresses", "web", None, None),
        ("addresses.web[2]", "addresses", "web", None, 2),
        ("modules.db.ips", "modules", "db", "ips", None),
        ("modules.db.ips[0]", "modules", "db", "ips", 0),
        ("modules.web2.vm_ids[999]", "modules", "web2", "vm_ids", 999),
        ("hosts.db.ips", "hosts", "db", "ips", None),
        ("hosts.all.ips[0]", "hosts", "all", "ips", 0),
    ],
)
def test_every_kind_parses_into_its_parts(text, kind, name, sub, index):
    ref = parse(text)
    assert ref == Reference(kind=kind, name=name, sub=sub, index=index)
    assert str(ref) == text
    assert NEW.validate_python(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "params.x; rm -rf /", "${var.x}", "{{ lookup('pipe', 'id') }}", "modules.m", "modules.m.out.more",
        "hosts.g.names", "hosts.g", "hosts.g.ips.x", "params", "params.", "params.X", "params.1x", "params.x-y",
        "secrets.a.b", "deployment.x", "site", "addresses.a.b", "var.x", "PARAMS.x", "", " params.x", "params.x ",
        "params.x\n", "params.x[-1]", "params.x[]", "params.x[1000]", "params.x[0][1]", "params.x[a]",
        "params.x.[0]", "modules..out", "hosts..ips",
    ],
)  # fmt: skip
def test_what_is_not_a_reference_is_refused_naming_the_kinds(text):
    with pytest.raises(ValueError, match=r"is not a reference: one of deployment, params\.<name>, secrets\.<name>"):
        parse(text)
    with pytest.raises(ValueError, match="is not a reference"):
        NEW.validate_python(text)


def near_references() -> st.SearchStrategy[str]:
    """Strings around the grammar: references, and references with one character added, removed or changed."""
    words = st.sampled_from([*KINDS, "ips", "names", "x", "a_1", "X", "1a", "var", ""])
    pieces = st.lists(words, min_size=1, max_size=4).map(".".join)
    index = st.one_of(st.just(""), st.integers(-2, 1200).map(lambda i: f"[{i}]"), st.sampled_from(["[]", "[0][0]"]))
    base = st.one_of(st.builds(lambda p, i: p + i, pieces, index), st.from_regex(OLD_PATTERN, fullmatch=True))
    noise = st.text(alphabet="az09_.[]$;{}\n -", max_size=2)
    return st.one_of(base, st.builds(lambda b, n, at: b[:at] + n + b[at:], base, noise, st.integers(0, 30)),
                     st.builds(lambda b, at: b[:at] + b[at + 1 :], base, st.integers(0, 30)))  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(near_references())
def test_the_schema_accepts_exactly_what_it_accepted_before(text):
    """The grammar now comes from the table of kinds; the YAML schema must accept exactly the same strings."""

    def accepts(adapter: TypeAdapter) -> bool:
        try:
            adapter.validate_python(text)
        except ValueError:
            return False
        return True

    assert accepts(NEW) == accepts(OLD), text


# -- checks ---------------------------------------------------------------------------------------

BLUEPRINT = Blueprint.model_validate({
    "name": "demo", "version": "1.0.0", "description": "references",
    "params": {"cpu": {"type": "integer", "default": 1}, "token": {"type": "string", "default": "", "secret": True}},
    "secrets": {"key": "kv/data/umc/ansible#key"},
    "modules": {
        "web": {"source": "vm", "addresses": {"count": "params.cpu"}},
        "db": {"source": "vm"},
        "lost": {"source": "nowhere"},
    },
    "hosts": [{"module": "web", "groups": ["web"]}],
})  # fmt: skip
OUTPUTS = {"web": frozenset({"names", "ips"}), "db": frozenset({"ips"})}  # "lost": its files cannot be read


CHECKS = [
    ("deployment", "input", None),
    ("deployment", "ssh_key", "must be a secrets.<name> reference"),
    ("params.cpu", "address", None),
    ("params.nope", "input", "unknown param 'nope'; params: cpu, token"),
    ("params.cpu", "ssh_key", "must be a secrets.<name> reference"),
    ("secrets.key", "ssh_key", None),
    ("secrets.key", "var", None),
    ("secrets.nope", "ssh_key", "unknown secret 'nope'; secrets: key"),
    ("site.datacenter", "input", None),
    ("site.nope", "var", "unknown site setting 'nope'; site settings: allow_unverified_ssl, client_source_"),
    ("addresses.web[0]", "input", None),
    ("addresses.web", "output", None),
    ("addresses.db", "input", "module 'db' declares no addresses"),
    ("addresses.web", "address", "addresses.<module> is only for module inputs, playbook vars and outputs, "
                                 "not address specs: an address spec says which addresses to claim"),
    ("modules.db.ips[0]", "input", None),
    ("modules.db.ips", "address", None),
    ("modules.db.names", "input", "module 'db' has no output 'names'; outputs: ips"),
    ("modules.other.ips", "output", "unknown module 'other'; modules: db, lost, web"),
    ("modules.lost.anything", "var", None),  # the module's own problem says its files cannot be read
    ("hosts.web.ips", "var", None),
    ("hosts.all.ips[0]", "output", None),
    ("hosts.web.ips", "input", "hosts.<group>.ips is only for playbook vars and outputs, not module inputs: "
                               "hosts are known once every module is applied"),
    ("hosts.web.ips", "address", "hosts.<group>.ips is only for playbook vars and outputs, not address specs"),
    ("hosts.db.ips", "var", "unknown host group 'db'; host groups: all, web"),
]  # fmt: skip
"""(reference, where it stands, the problem found or None)."""


@pytest.mark.parametrize(("text", "use", "problem"), CHECKS)
def test_each_kind_is_checked_where_it_stands(text, use, problem):
    found = check_reference(parse(text), BLUEPRINT, use=use, outputs=OUTPUTS)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_every_kind_has_check_rows():
    assert {parse(text).kind for text, _, _ in CHECKS} == set(KINDS)


@pytest.mark.parametrize(
    ("ref", "secret"),
    [("secrets.key", True), ("params.token", True), ("params.cpu", False), ("deployment", False),
     ("site.datacenter", False), ("modules.db.ips", False)],
)  # fmt: skip
def test_secret_references(ref, secret):
    assert is_secret(parse(ref), BLUEPRINT) is secret


# -- resolution -----------------------------------------------------------------------------------

VALUES = Values(
    deployment="team-x",
    params={"cpu": 2, "token": SecretStr("tok-canary"), "ips": ["10.0.0.9"], "flag": True},
    secrets={"key": SecretStr("key-canary")},
    site={"datacenter": "dc1", "template": None},
    addresses={"web": ["10.0.0.5", "10.0.0.6"]},
    outputs={"db": {"ips": ["10.0.1.1"], "password": SecretStr("out-canary")}},
    groups={"all": ["10.0.0.5", "10.0.1.1"], "db": ["10.0.1.1"], "web": []},
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("deployment", "team-x"),
        ("params.cpu", 2),
        ("params.ips[0]", "10.0.0.9"),
        ("site.datacenter", "dc1"),
        ("addresses.web", ["10.0.0.5", "10.0.0.6"]),
        ("addresses.web[1]", "10.0.0.6"),
        ("modules.db.ips", ["10.0.1.1"]),
        ("modules.db.ips[0]", "10.0.1.1"),
        ("hosts.db.ips", ["10.0.1.1"]),
        ("hosts.all.ips[1]", "10.0.1.1"),
        ("hosts.web.ips", []),
        (Literal_(value={"a": [1, 2]}), {"a": [1, 2]}),
        (Literal_(value=None), None),
        (Format(format="{deployment}-web"), "team-x-web"),
        (Format(format="{deployment}-{cpu:02d}-{flag}"), "team-x-02-True"),
        (Format(format="plain"), "plain"),
    ],
)
def test_each_kind_resolves(value, expected):
    assert resolve(value, VALUES) == expected


@pytest.mark.parametrize(
    ("value", "secret"),
    [("secrets.key", "key-canary"), ("params.token", "tok-canary"), ("modules.db.password", "out-canary")],
)
def test_secrets_resolve_to_secret_strings(value, secret):
    found = resolve(value, VALUES)
    assert isinstance(found, SecretStr) and found.get_secret_value() == secret


@pytest.mark.parametrize(
    ("value", "missing"),
    [
        ("site.template", "site setting 'template' is not set; export UMC_VSPHERE_TEMPLATE=... (or pass "
                          "Settings(vsphere_template=...))"),
        ("site.domain", "site setting 'domain' is not set"),
        ("params.nope", "the run has no value for param 'nope'"),
        ("secrets.nope", "secret 'nope' was not read from Vault"),
        ("addresses.db", "no addresses are claimed for 'db' yet"),
        ("addresses.web[2]", "addresses.web has no item 2 (2 item(s))"),
        ("params.cpu[0]", "params.cpu has no item 0 (not a list)"),
        ("modules.web.ips", "the outputs of module 'web' are not read yet (apply it first)"),
        ("modules.db.names", "module 'db' returned no output 'names'"),
        ("modules.db.ips[1]", "modules.db.ips has no item 1 (1 item(s))"),
        ("hosts.nope.ips", "group 'nope' is not in the inventory"),
        (Format(format="{token}"), "param 'token' is secret and cannot be part of a name"),
        (Format(format="{nope}-x"), "the run has no value for param 'nope'"),
        (Format(format="{deployment.__class__}"), "the run has no value for param 'deployment.__class__'"),
        (Format(format="{cpu:%}x{cpu:q}"), "{cpu} cannot be formatted with 'q'"),
    ],
)  # fmt: skip
def test_what_cannot_be_resolved_is_a_typed_error_naming_it(value, missing):
    with pytest.raises(UnresolvedReference) as unresolved:
        resolve(value, VALUES, where="modules.web.inputs.x")
    error = unresolved.value
    assert isinstance(error, UmcInfraError) and not isinstance(error, KeyError)
    assert error.missing.startswith(missing), error.missing
    assert error.where == "modules.web.inputs.x"
    assert error.reference == (value.format if isinstance(value, Format) else value)
    assert str(error).startswith(f"[references] modules.web.inputs.x: cannot resolve {error.reference}: {missing}")
    assert "canary" not in str(error)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_kind_resolves_against_nothing_with_a_key_error(kind):
    sample = {"deployment": "deployment", "params": "params.x", "secrets": "secrets.x", "site": "site.datacenter",
              "addresses": "addresses.x", "modules": "modules.x.y", "hosts": "hosts.x.ips"}[kind]  # fmt: skip
    empty = Values(deployment="d")
    if kind == "deployment":
        assert resolve(sample, empty) == "d"
        return
    with pytest.raises(UnresolvedReference, match=re.escape(f"cannot resolve {sample}: ")):
        resolve(sample, empty)


def test_hosts_are_unresolved_until_the_inventory_is_built():
    with pytest.raises(UnresolvedReference, match="the inventory is not built yet"):
        resolve("hosts.db.ips", VALUES.model_copy(update={"groups": None}))


def test_values_are_filled_by_copies():
    start = Values(deployment="d")
    filled = start.with_addresses("web", ["10.0.0.5"]).with_outputs("web", {"ips": ["10.0.0.5"]})
    filled = filled.with_groups({"all": ["10.0.0.5"], "web": ["10.0.0.5"]})
    assert resolve("addresses.web[0]", filled) == resolve("modules.web.ips[0]", filled) == "10.0.0.5"
    assert resolve("hosts.web.ips", filled) == ["10.0.0.5"]
    assert start.addresses == {} and start.outputs == {} and start.groups is None


def test_values_of_a_run_take_the_site_settings():
    from umc_infra.params import ResolvedParams
    from umc_infra.secrets.source import Secrets

    site = Settings(vsphere_datacenter="dc9", vsphere_template=None)
    values = Values.of(settings=site, params=ResolvedParams(blueprint="b", deployment="d", values={"cpu": 1}),
                       secrets=Secrets(values={"key": SecretStr("k")}))  # fmt: skip
    assert set(values.site) == set(SITE_FIELDS)
    assert resolve("site.datacenter", values) == "dc9"
    assert resolve("params.cpu", values) == 1 and resolve("deployment", values) == "d"
    with pytest.raises(UnresolvedReference, match="UMC_VSPHERE_TEMPLATE"):
        resolve("site.template", values)


def test_resolve_all_names_each_key():
    assert resolve_all({"a": "deployment", "b": Literal_(value=1)}, VALUES, where="playbooks[0].vars") == {
        "a": "team-x", "b": 1,
    }  # fmt: skip
    with pytest.raises(UnresolvedReference, match=r"^\[references\] playbooks\[0\]\.vars\.b: cannot resolve"):
        resolve_all({"a": "deployment", "b": "modules.web.ips"}, VALUES, where="playbooks[0].vars")


# -- the order of modules -------------------------------------------------------------------------


def modules(reads: dict[str, list[str]], *, address_reads: dict[str, str] | None = None) -> Blueprint:
    """A blueprint whose module ``m`` reads an output of each module in ``reads[m]`` (in this listing order)."""
    specs: dict[str, dict] = {
        name: {"source": "vm", "inputs": {f"from_{other}": f"modules.{other}.out" for other in others}}
        for name, others in reads.items()
    }
    for name, other in (address_reads or {}).items():
        specs[name]["addresses"] = {"count": f"modules.{other}.count"}
    return Blueprint.model_validate({"name": "order", "version": "1.0.0", "description": "d", "modules": specs})


@pytest.mark.parametrize(
    ("reads", "order"),
    [
        ({"a": [], "b": ["a"], "c": ["b"]}, ["a", "b", "c"]),  # a chain, listed in order
        ({"c": ["b"], "b": ["a"], "a": []}, ["a", "b", "c"]),  # ... listed in reverse dependency order
        ({"x": [], "y": [], "z": []}, ["x", "y", "z"]),  # independent: the blueprint's order
        ({"z": [], "x": [], "y": []}, ["z", "x", "y"]),
        ({"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []}, ["a", "c", "b", "d"]),  # a diamond
        ({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}, ["a", "b", "c", "d"]),
        ({"label": ["web"], "web": [], "extra": []}, ["web", "label", "extra"]),  # lab-web's shape
        ({"late": ["early"], "free": [], "early": []}, ["free", "early", "late"]),
    ],
)
def test_dependency_order(reads, order):
    blueprint = modules(reads)
    assert dependency_order(blueprint) == order
    for module, others in reads.items():
        assert needs(blueprint, module) == set(others)


def test_an_address_spec_that_reads_outputs_is_a_need():
    blueprint = modules({"vm": [], "net": []}, address_reads={"vm": "net"})
    assert needs(blueprint, "vm") == {"net"}
    assert dependency_order(blueprint) == ["net", "vm"]


@pytest.mark.parametrize(
    ("reads", "cycle"),
    [
        ({"a": ["b"], "b": ["a"]}, "a -> b -> a"),
        ({"a": ["a"]}, "a -> a"),
        ({"free": [], "a": ["c"], "b": ["a"], "c": ["b"], "tail": ["a"]}, "a -> c -> b -> a"),
        ({"tail": ["a"], "a": ["b"], "b": ["a"]}, "a -> b -> a"),
    ],
)
def test_a_cycle_is_a_blueprint_problem_naming_it(reads, cycle):
    with pytest.raises(BlueprintError) as refused:
        dependency_order(modules(reads))
    (problem,) = refused.value.problems
    assert problem.message.startswith(f"modules read each other's outputs in a cycle: {cycle};")
    assert problem.where == f"modules.{cycle.split()[0]}"


def listings_and_edges(n: int) -> st.SearchStrategy:
    """A listing order of modules 0..n-1, and pairs (a, b): a reads b."""
    pairs = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=12)
    return st.tuples(st.permutations(range(n)), pairs)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 7).flatmap(listings_and_edges))
def test_any_acyclic_blueprint_gets_a_stable_topological_order(case):
    listing, edges = case
    acyclic = {(a, b) for a, b in edges if a > b}  # a reads b: only from higher to lower numbers, so no cycle
    reads = {f"m{i}": sorted(f"m{b}" for a, b in acyclic if a == i) for i in listing}
    order = dependency_order(modules(reads))
    assert sorted(order) == sorted(reads)
    for module, others in reads.items():
        assert all(order.index(other) < order.index(module) for other in others)
    # stable: the first module listed goes first among those ready, so two neighbours out of the listing's
    # order are there only because the second waited for the first
    listed = list(reads)
    for earlier, later in itertools.pairwise(order):
        if listed.index(earlier) > listed.index(later):
            assert earlier in reads[later]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6).flatmap(listings_and_edges))
def test_a_blueprint_has_an_order_exactly_when_its_modules_read_no_cycle(case):
    listing, edges = case
    reads = {f"m{i}": sorted({f"m{b}" for a, b in edges if a == i}) for i in listing}
    reach = {module: set(others) for module, others in reads.items()}
    for via in reach:  # Warshall: what each module reads, directly or not
        for module in reach:
            if via in reach[module]:
                reach[module] |= reach[via]
    cyclic = any(module in reach[module] for module in reach)
    try:
        dependency_order(modules(reads))
    except BlueprintError as refused:
        assert cyclic
        cycle = refused.problems[0].message.split(": ")[1].split(";")[0].split(" -> ")
        assert all(after in reads[before] for before, after in itertools.pairwise(cycle))
    else:
        assert not cyclic
