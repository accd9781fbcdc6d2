// The portal page: sign in, pick a blueprint, fill its form (json-editor), preview, submit, follow the job.
//
// The bearer token lives in this module's memory only: never in localStorage, a cookie or a URL. Job events
// are read with fetch() and a stream reader (EventSource cannot send an Authorization header), resuming with
// Last-Event-ID if the connection drops.

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const MAX_EVENTS = 1000;

const state = {
  token: null,
  editor: null,
  blueprint: null,
  stream: null, // AbortController of the running event stream
};

const $ = (id) => document.getElementById(id);

// -- small DOM helpers (text only: nothing from the API is parsed as HTML) --------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function cell(value, cls) {
  return el("td", { class: cls, text: value === undefined || value === null ? "" : String(value) });
}

function show(id, visible = true) {
  $(id).hidden = !visible;
}

function status(text) {
  $("status").textContent = text;
}

function shown(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function link(url) {
  // Only http(s) addresses become links.
  if (!/^https?:\/\//.test(url)) return document.createTextNode(url);
  return el("a", { href: url, rel: "noopener noreferrer", target: "_blank", text: url });
}

// -- the API -------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail, text) {
    const message = detail && typeof detail === "object" && !Array.isArray(detail) ? detail.message : text;
    super(message || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

async function apiError(response) {
  const text = await response.text();
  let detail = null;
  try {
    detail = JSON.parse(text).detail;
  } catch {
    // not JSON: the text is the message
  }
  return new ApiError(response.status, detail, text || response.statusText);
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) throw await apiError(response);
  return response.status === 204 ? null : response.json();
}

// -- errors --------------------------------------------------------------------------------------------------

function clearErrors() {
  $("error").textContent = "";
  show("error", false);
  $("problem-list").textContent = "";
  show("problems", false);
  for (const node of document.querySelectorAll(".field-error")) node.remove();
  for (const node of document.querySelectorAll("[aria-invalid=true]")) node.removeAttribute("aria-invalid");
}

// The problems of a 422: the service's ParamProblems ({field, message, allowed}), or FastAPI's own body
// errors ({loc, msg}) for a request that is not even the right shape.
function problemsOf(detail) {
  if (detail && Array.isArray(detail.problems)) return detail.problems;
  if (Array.isArray(detail)) {
    return detail.map((d) => ({
      field: (d.loc || []).filter((part) => part !== "body").join("."),
      message: d.msg || "invalid",
      allowed: "",
    }));
  }
  return [];
}

function fieldEditor(field) {
  // "params.cpu" -> json-editor's "root.params.cpu"; "params.ip_addresses.2" falls back to the list.
  if (!state.editor || !field) return null;
  const parts = String(field).split(".");
  while (parts.length) {
    const found = state.editor.getEditor(`root.${parts.join(".")}`);
    if (found) return found;
    parts.pop();
  }
  return null;
}

function showProblems(problems) {
  const list = $("problem-list");
  for (const p of problems) {
    const words = `${p.field}: ${p.message}${p.allowed ? ` (allowed: ${p.allowed})` : ""}`;
    list.append(el("li", { "data-testid": `problem-${p.field}`, "data-field": p.field, text: words }));
    const editor = fieldEditor(p.field);
    if (editor && editor.container) {
      const input = editor.input || editor.container.querySelector("input, select, textarea");
      const id = `field-error-${p.field}`.replace(/[^A-Za-z0-9_-]/g, "-");
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", id);
      }
      editor.container.append(el("p", { class: "field-error", id, "data-testid": `field-error-${p.field}`, text: words }));
    }
  }
  show("problems", problems.length > 0);
}

function showQuota(detail) {
  const rows = ["quota", "current", "requested"].map((row) =>
    el(
      "tr",
      { class: row === "requested" ? "over" : undefined },
      el("th", { scope: "row", text: row }),
      ...["vms", "vcpus", "memory_mb"].map((k) => cell((detail[row] || {})[k], "num")),
    ),
  );
  const table = el(
    "table",
    { "data-testid": "quota-breach" },
    el("caption", { text: `Quota of ${detail.department}: over on ${(detail.over || []).join(", ")}` }),
    el("thead", {}, el("tr", {}, el("th"), el("th", { text: "VMs" }), el("th", { text: "vCPUs" }), el("th", { text: "Memory (MB)" }))),
    el("tbody", {}, ...rows),
  );
  $("error").append(table);
}

function showError(error, context) {
  show("error", true);
  if (!(error instanceof ApiError)) {
    $("error").textContent = `${context}: ${error.message || error}`;
    return;
  }
  const detail = error.detail;
  const prefix = {
    401: "Not signed in, or the token was refused (sign in again)",
    403: "Not allowed",
    404: "Not found",
    409: "Refused",
    422: "Please correct the request",
  }[error.status] || `The service answered ${error.status}`;
  $("error").textContent = `${context}: ${prefix}: ${error.message}`;
  $("error").dataset.status = String(error.status);
  if (error.status === 422) showProblems(problemsOf(detail));
  if (error.status === 409 && detail && detail.quota) showQuota(detail);
  if (error.status === 401) signOut(false);
}

// -- sign-in -------------------------------------------------------------------------------------------------

function tokenClaims(token) {
  // For display only (the service verifies the token): the JWT's payload.
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

async function loadSandboxUsers() {
  let users;
  try {
    const response = await fetch("/api/sandbox/users", { cache: "no-store", credentials: "omit" });
    if (!response.ok) return; // 404: sandbox login is off (a real site)
    users = await response.json();
  } catch {
    return;
  }
  const box = $("sandbox-users");
  box.textContent = "";
  for (const user of users) {
    const button = el("button", {
      type: "button",
      id: `sandbox-user-${user.name}`,
      "data-testid": `sandbox-user-${user.name}`,
      text: `Sign in as ${user.name} (${user.group})`,
    });
    button.addEventListener("click", () => sandboxSignIn(user.name));
    box.append(button);
  }
  show("sandbox-login", users.length > 0);
}

async function sandboxSignIn(user) {
  clearErrors();
  status(`Signing in as ${user} ...`);
  try {
    const issued = await api("POST", "/api/sandbox/token", { user });
    await signIn(issued.token);
  } catch (error) {
    status("");
    showError(error, `Sign-in as ${user}`);
  }
}

async function signIn(token) {
  state.token = token;
  let who;
  try {
    who = await api("GET", "/api/me");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    const claims = tokenClaims(token); // no /api/me: what the token says
    who = { caller: { username: claims.preferred_username || claims.sub || "?" }, departments: [], admin: false };
  }
  const depts = who.admin ? "admin: every department" : (who.departments || []).join(", ") || "no department";
  $("whoami").textContent = `Signed in as ${who.caller.username} (${depts})`;
  $("whoami").dataset.user = who.caller.username;
  show("sign-in", false);
  show("sign-out", true);
  show("request", true);
  show("deployments-section", true);
  status("");
  await Promise.all([loadBlueprints(), loadDeployments()]);
}

function signOut(clearMessages = true) {
  state.token = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  if (state.editor) state.editor.destroy();
  state.editor = null;
  state.blueprint = null;
  if (clearMessages) clearErrors();
  $("whoami").textContent = "Not signed in.";
  delete $("whoami").dataset.user;
  $("blueprint").length = 1;
  $("blueprint-description").textContent = "";
  $("deployments").tBodies[0].textContent = "";
  for (const id of ["request", "plan", "job", "result", "deployments-section", "sign-out"]) show(id, false);
  show("sign-in", true);
  status("");
}

// -- blueprints and the form ---------------------------------------------------------------------------------

async function loadBlueprints() {
  const select = $("blueprint");
  select.length = 1;
  const blueprints = await api("GET", "/api/blueprints");
  for (const b of blueprints) {
    select.append(el("option", { value: b.name, text: `${b.name} ${b.version}: ${b.description}` }));
  }
}

async function pickBlueprint(name) {
  clearErrors();
  show("plan", false);
  if (state.editor) state.editor.destroy();
  state.editor = null;
  state.blueprint = null;
  $("form").textContent = "";
  $("blueprint-description").textContent = "";
  for (const id of ["preview", "submit"]) $(id).disabled = true;
  if (!name) return;
  status(`Loading ${name} ...`);
  try {
    const form = await api("GET", `/api/blueprints/${encodeURIComponent(name)}`);
    state.blueprint = name;
    // json-editor shows the schema's own title and description; the blueprint's only where it has none.
    $("blueprint-description").textContent = form.schema.description ? "" : form.description || "";
    buildEditor(form.schema);
    status("");
  } catch (error) {
    status("");
    showError(error, `Blueprint ${name}`);
  }
}

// A param bounded by another ("x-umc-at-most": {"memory_reservation_mb": "memory_mb"}): plain JSON Schema cannot
// compare two properties, so the page checks it (the service checks it again and names the same field).
function atMost(schema, value, path) {
  const bounds = schema && schema["x-umc-at-most"];
  if (!bounds || !value || typeof value !== "object") return [];
  return Object.entries(bounds)
    .filter(([small, big]) => typeof value[small] === "number" && typeof value[big] === "number")
    .filter(([small, big]) => value[small] > value[big])
    .map(([small, big]) => ({
      path: `${path}.${small}`,
      property: "x-umc-at-most",
      message: `must be at most ${big} (${value[big]})`,
    }));
}

function buildEditor(schema) {
  if (!window.JSONEditor) throw new Error("the form library did not load");
  const validators = window.JSONEditor.defaults.custom_validators;
  if (!validators.includes(atMost)) validators.push(atMost);
  const editor = new window.JSONEditor($("form"), {
    schema,
    theme: "html",
    iconlib: null,
    disable_edit_json: true,
    disable_properties: true,
    disable_collapse: true,
    disable_array_delete_all_rows: true,
    disable_array_delete_last_row: true,
    prompt_before_delete: false,
    no_additional_properties: true,
    show_errors: "interaction",
    use_default_values: true,
  });
  editor.on("ready", () => {
    for (const id of ["preview", "submit"]) $(id).disabled = false;
    $("form").dataset.ready = "true";
  });
  editor.on("change", () => {
    for (const node of document.querySelectorAll(".field-error")) node.remove();
  });
  state.editor = editor;
}

function request() {
  const value = state.editor.getValue() || {};
  return { blueprint: state.blueprint, deployment: value.deployment || "", params: value.params || {} };
}

// -- preview -------------------------------------------------------------------------------------------------

async function preview() {
  clearErrors();
  show("plan", false);
  status("Planning ...");
  try {
    const asked = request();
    const planned = await api("POST", "/api/plans", asked);
    renderPlan(planned, asked.params);
    status("");
  } catch (error) {
    status("");
    showError(error, "Preview");
  }
}

function renderPlan({ plan, quota }, asked) {
  const counts = plan.counts || {};
  const total = { add: 0, change: 0, remove: 0 };
  const rows = Object.entries(counts).map(([module, c]) => {
    for (const k of Object.keys(total)) total[k] += c[k] || 0;
    return el("tr", { "data-testid": `plan-module-${module}` }, cell(module), cell(c.add, "num"), cell(c.change, "num"), cell(c.remove, "num"));
  });
  const body = $("plan-modules").tBodies[0];
  body.textContent = "";
  body.append(...rows);
  const deferred = (plan.deferred || []).length ? `; known after the earlier modules: ${plan.deferred.join(", ")}` : "";
  $("plan-summary").textContent =
    `${plan.exists ? "Update" : "Create"} ${plan.deployment} (${[plan.blueprint, plan.version].filter(Boolean).join(" ")}): ` +
    `${total.add} to add, ${total.change} to change, ${total.remove} to destroy${deferred}.`;
  $("plan-summary").dataset.add = String(total.add);
  $("plan-summary").dataset.change = String(total.change);
  $("plan-summary").dataset.destroy = String(total.remove);

  const quotaBody = $("plan-quota").tBodies[0];
  quotaBody.textContent = "";
  if (quota) {
    for (const row of ["quota", "current", "requested"]) {
      const values = row === "quota" ? quota.quota : quota[row];
      quotaBody.append(
        el("tr", { class: row === "requested" && !quota.fits ? "over" : undefined },
          el("th", { scope: "row", text: row }),
          ...["vms", "vcpus", "memory_mb"].map((k) => cell((values || {})[k], "num"))),
      );
    }
    $("plan-quota").querySelector("caption").textContent = quota.fits
      ? `Quota of ${quota.department}: fits`
      : `Quota of ${quota.department}: over on ${(quota.over || []).join(", ")}`;
  }

  const params = $("plan-params").tBodies[0];
  params.textContent = "";
  const changes = plan.param_changes || {};
  // The params the provision would use (the plan's); the ones asked for if a plan does not say.
  for (const [name, value] of Object.entries(plan.params || asked || {})) {
    const was = name in changes ? shown(changes[name].before) : "";
    params.append(el("tr", { "data-testid": `plan-param-${name}` }, cell(name), cell(shown(value)), cell(was)));
  }
  show("plan", true);
}

// -- submit and the job's events -----------------------------------------------------------------------------

async function submit() {
  clearErrors();
  status("Submitting ...");
  let accepted;
  try {
    accepted = await api("POST", "/api/deployments", request());
  } catch (error) {
    status("");
    showError(error, "Submit");
    return;
  }
  status(`Queued job ${accepted.job} for ${accepted.deployment}`);
  loadDeployments().catch((error) => showError(error, "Deployments")); // the request is listed at once
  await follow(accepted.job);
}

function describe(event) {
  const d = event.data || {};
  switch (event.kind) {
    case "job_started":
      return `job started (attempt ${d.attempt}${d.worker ? `, ${d.worker}` : ""})`;
    case "step_started":
      return `${d.step} ...`;
    case "step_finished":
      return `${d.step} ${d.ok ? "done" : "FAILED"} in ${Number(d.seconds).toFixed(1)} s`;
    case "resource":
      return `${d.module}: ${d.action} ${d.address} ${d.status}`;
    case "task":
      return `${d.playbook} [${d.host}] ${d.task}: ${d.status}`;
    case "output":
      return `${d.step}: ${d.line}`;
    case "job_retrying":
      return `retrying after ${d.error_type}: ${d.error}`;
    case "job_finished":
      return `job ${d.state}${d.error ? `: ${d.error_type}: ${d.error}` : ""}`;
    default:
      return `${event.kind} ${JSON.stringify(d)}`;
  }
}

function addEvent(event) {
  const list = $("events");
  const d = event.data || {};
  const cls = event.kind === "job_finished" ? `finished ${d.state}` : d.status || (d.ok === false ? "failed" : "");
  list.append(el("li", { class: cls, "data-kind": event.kind, "data-id": event.id, text: describe(event) }));
  if (event.kind === "job_started") $("job-state").textContent = "running";
  while (list.children.length > MAX_EVENTS) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

function parseBlock(block) {
  // One server-sent event: "id:", "event:", "data:" lines; ":" starts a comment.
  const event = { id: null, event: "message", data: "" };
  const data = [];
  for (const raw of block.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") event.id = value;
    else if (field === "event") event.event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  event.data = data.join("\n");
  return event;
}

// Read the job's events until its job_finished (or its end); resume after the last id if the stream drops.
async function streamEvents(job, onEvent, signal) {
  let lastId = null;
  for (let attempt = 0; attempt < 6; attempt++) {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${state.token}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    let response;
    try {
      response = await fetch(`/api/jobs/${job}/events`, { headers, signal, cache: "no-store", credentials: "omit" });
    } catch (error) {
      if (signal.aborted) return null;
      await new Promise((resolve) => setTimeout(resolve, 1000 * (attempt + 1)));
      continue;
    }
    if (!response.ok) throw await apiError(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          const sse = parseBlock(block);
          if (!sse) continue;
          if (sse.id) lastId = sse.id;
          const event = JSON.parse(sse.data);
          onEvent(event);
          if (event.kind === "job_finished") return event.data;
        }
      }
    } catch (error) {
      if (signal.aborted) return null;
      // the connection dropped: resume below
    }
    const job_ = await api("GET", `/api/jobs/${job}`);
    if (FINAL.has(job_.state)) return { state: job_.state, error: job_.outcome };
  }
  throw new Error("the event stream kept dropping; reload the deployments to see the outcome");
}

async function follow(job) {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  $("events").textContent = "";
  $("job-id").textContent = String(job);
  $("job-state").textContent = "queued";
  $("job-state").className = "";
  show("job", true);
  show("result", false);
  try {
    const finished = await streamEvents(job, addEvent, controller.signal);
    if (!finished) return;
    $("job-state").textContent = finished.state;
    $("job-state").className = finished.state;
    $("job").dataset.state = finished.state;
    status(`Job ${job} ${finished.state}`);
    if (finished.state === "succeeded" && finished.result) renderResult(finished.result);
    if (finished.state === "failed") showError(new Error(`${finished.error_type || ""} ${finished.error || ""}`.trim()), `Job ${job} failed`);
  } catch (error) {
    showError(error, `Job ${job}`);
  } finally {
    if (state.stream === controller) state.stream = null;
  }
  await loadDeployments().catch((error) => showError(error, "Deployments"));
}

function hostUrl(host, params) {
  // A web host's page: the blueprint's listen_port, if it has one.
  const port = params && params.listen_port;
  if (!port || !(host.groups || []).includes("web")) return "";
  return `http://${host.ip}${Number(port) === 80 ? "" : `:${port}`}/`;
}

function renderResult(result) {
  const body = $("hosts").tBodies[0];
  body.textContent = "";
  for (const host of result.hosts || []) {
    const url = hostUrl(host, result.params);
    body.append(
      el("tr", { "data-testid": `host-${host.name}` },
        cell(host.name), cell(host.ip), cell((host.groups || []).join(", ")),
        el("td", {}, url ? link(url) : "")),
    );
  }
  const outputs = $("outputs");
  outputs.textContent = "";
  for (const [name, value] of Object.entries(result.outputs || {})) {
    const dd = el("dd", { "data-testid": `output-${name}` });
    const values = Array.isArray(value) ? value : [value];
    values.forEach((v, i) => {
      if (i) dd.append(", ");
      dd.append(typeof v === "string" ? link(v) : shown(v));
    });
    outputs.append(el("dt", { text: name }), dd);
  }
  show("result", true);
}

// -- deployments ---------------------------------------------------------------------------------------------

async function loadDeployments() {
  const deployments = await api("GET", "/api/deployments");
  const body = $("deployments").tBodies[0];
  body.textContent = "";
  for (const d of deployments) {
    const u = d.usage || {};
    body.append(
      el("tr", { "data-testid": `deployment-${d.name}`, "data-name": d.name },
        cell(d.name), cell(d.department), cell(d.blueprint), cell(d.requested_by),
        cell(d.created ? new Date(d.created).toLocaleString() : ""),
        cell(d.lease_until ? new Date(d.lease_until).toLocaleDateString() : "none"),
        cell(`${u.vms ?? ""} / ${u.vcpus ?? ""} / ${u.memory_mb ?? ""}`, "num")),
    );
  }
  show("deployments-empty", deployments.length === 0);
}

// -- wiring --------------------------------------------------------------------------------------------------

function wire() {
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    if (!token) return;
    try {
      await signIn(token);
    } catch (error) {
      showError(error, "Sign-in");
    }
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("blueprint").addEventListener("change", (event) => pickBlueprint(event.target.value));
  $("preview").addEventListener("click", preview);
  $("submit").addEventListener("click", submit);
  $("refresh").addEventListener("click", () => {
    clearErrors();
    loadDeployments().catch((error) => showError(error, "Deployments"));
  });
  document.body.dataset.portal = "ready";
}

wire();
loadSandboxUsers();
