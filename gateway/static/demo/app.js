// tokengate demo client: plain JavaScript, no build step.
//
// The access token lives only in the `accessToken` variable below: never in localStorage,
// sessionStorage or a cookie, so a script injected later cannot find it at rest, and it is gone
// when the tab closes. The refresh token is an HttpOnly cookie this script cannot read; the
// browser sends it only to /api/v1/auth/* on this origin. Reloading the page therefore starts
// with POST /api/v1/auth/refresh to get a fresh access token from that cookie.
//
// The session is bound to a key this page cannot leak (DPoP, RFC 9449): a WebCrypto key pair made
// non-extractable (Ed25519, or ECDSA P-256 "ES256" where the browser lacks Ed25519) and kept in
// IndexedDB, which stores the CryptoKey object itself, never its bytes. Login, refresh, logout
// and every API call carry a proof signed by it, so a copied refresh cookie (or a stolen access
// token) is useless without this browser's key. If the browser can make neither key, the page
// refuses to log in rather than fall back to an unbound session.
//
// Everything the server returns is written with textContent, never innerHTML, so a note titled
// "<img onerror=...>" stays text.
//
// Each form shows its own result next to it (a message at the top of a long page is out of
// view), in words a person understands: server codes and "Failed to fetch" become sentences, a
// 429 or 503 says how long to wait (its Retry-After) and keeps the button off until then.
"use strict";

const API = "/api/v1";
// Refresh this many seconds before the access token expires, so a request never races expiry.
const REFRESH_MARGIN_SECONDS = 30;

let accessToken = null;
let refreshTimer = null;
let refreshInFlight = null;
// Seconds the gateway asked us to wait after the last refresh (a 429 or a 5xx with Retry-After),
// or null: such a refusal is not the end of the session, and must not look like one.
let refreshWait = null;
// The last server nonce (DPoP-Nonce) and the gap between the gateway's clock and ours: a proof's
// iat must fall within the gateway's window, so a skewed clock is corrected from its Date header.
let dpopNonce = null;
let clockSkewMs = 0;

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// The per-form messages: what happened to *this* form, shown right under it.
const countdowns = new Map();

function say(id, text, isError = false) {
  const element = $(id);
  if (countdowns.has(id)) {
    clearInterval(countdowns.get(id));
    countdowns.delete(id);
  }
  element.textContent = text;
  element.classList.toggle("error", isError);
}

function clearMessages() {
  for (const id of ["login-message", "note-message", "password-message", "sessions-message"]) {
    say(id, "");
  }
}

// A refused call, as the page understands it: status, the gateway's error code and message,
// and the seconds to wait (Retry-After) when the answer gave one.
class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(typeof error.message === "string" ? error.message : `request failed (${status})`);
    this.status = status;
    this.code = typeof error.code === "string" ? error.code : "";
    this.retryAfter = retryAfter;
  }
}

function retryAfterSeconds(response) {
  const value = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return Number.isFinite(value) && value > 0 ? Math.min(value, 3600) : null;
}

async function apiError(response) {
  return new ApiError(response.status, await readJson(response), retryAfterSeconds(response));
}

function seconds(n) {
  return n === 1 ? "1 second" : `${n} seconds`;
}

// Words for what the gateway said. `context` picks the meaning of a code that depends on the
// form (a 403 on the password form is a wrong current password; on login, a foreign page).
function friendly(err, context) {
  if (!(err instanceof ApiError)) {
    // fetch() rejects with a TypeError ("Failed to fetch") when no answer arrived at all
    return "The gateway cannot be reached. Check that it is running and try again.";
  }
  const wait = err.retryAfter;
  if (err.status === 429) {
    const tries = context === "login" || context === "password" ? "attempts" : "requests";
    return `Too many ${tries}. Try again in ${wait ? seconds(wait) : "a minute"}.`;
  }
  if (err.status === 502 || err.status === 503 || err.status === 504) {
    return `The service is unavailable for a moment. Try again in ${seconds(wait || 5)}.`;
  }
  switch (err.code) {
    case "invalid_credentials":
      return "Wrong email or password.";
    case "forbidden":
      if (context === "password") return "The current password is not right.";
      if (context === "login") return "This page's address may not log in to this gateway.";
      return "The gateway refused this request.";
    case "validation_error":
      return `Please check the form: ${err.message}.`;
    case "invalid_dpop_proof":
    case "use_dpop_nonce":
      return "The gateway refused this browser's signature. Reload the page and try again.";
    case "not_found":
      return context === "note" ? "That note is already gone." : "That session has already ended.";
    case "payload_too_large":
      return "That is too long.";
    default:
      return `Something went wrong (${err.status}). Try again.`;
  }
}

// Show a failure under its form; with a wait, count it down and keep the button off meanwhile.
function sayError(id, err, context, button) {
  say(id, friendly(err, context), true);
  const wait = err instanceof ApiError && (err.status === 429 || err.status >= 502) ? err.retryAfter : null;
  if (!wait || !button) return;
  let left = wait;
  button.disabled = true;
  const timer = setInterval(() => {
    left -= 1;
    if (left <= 0) {
      clearInterval(timer);
      countdowns.delete(id);
      button.disabled = false;
      say(id, "You can try again now.");
      return;
    }
    $(id).textContent = friendly(new ApiError(err.status, { error: { code: err.code } }, left), context);
  }, 1000);
  countdowns.set(id, timer);
  document.body.dataset.waiting = String(wait);
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// ---- the DPoP key and proofs ----------------------------------------------------------------

const KEY_DB = "tokengate-demo";
const KEY_STORE = "keys";
const KEY_ID = "dpop";
let dpopKey = null; // {privateKey, jwk, alg}

function b64url(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function b64urlText(text) {
  return b64url(new TextEncoder().encode(text));
}

function keyDb(mode, action) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(KEY_DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(KEY_STORE);
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const tx = open.result.transaction(KEY_STORE, mode);
      const request = action(tx.objectStore(KEY_STORE));
      tx.oncomplete = () => {
        open.result.close();
        resolve(request.result);
      };
      tx.onerror = () => reject(tx.error);
    };
  });
}

// Ed25519 first; ES256 where WebCrypto has no Ed25519. extractable=false applies to the private
// key: the public key stays exportable, which is all a proof's jwk needs.
async function generateKey() {
  const choices = [
    { alg: "Ed25519", params: { name: "Ed25519" } },
    { alg: "ES256", params: { name: "ECDSA", namedCurve: "P-256" } },
  ];
  for (const choice of choices) {
    try {
      const pair = await crypto.subtle.generateKey(choice.params, false, ["sign", "verify"]);
      const exported = await crypto.subtle.exportKey("jwk", pair.publicKey);
      const jwk =
        choice.alg === "Ed25519"
          ? { kty: exported.kty, crv: exported.crv, x: exported.x }
          : { kty: exported.kty, crv: exported.crv, x: exported.x, y: exported.y };
      return { privateKey: pair.privateKey, jwk, alg: choice.alg };
    } catch {
      // not supported here: try the next one
    }
  }
  throw new Error("this browser cannot make a non-extractable signing key");
}

async function loadKey() {
  if (dpopKey !== null) return dpopKey;
  if (!window.crypto || !crypto.subtle || !window.indexedDB) {
    throw new Error("this browser lacks WebCrypto or IndexedDB");
  }
  let stored = await keyDb("readonly", (store) => store.get(KEY_ID));
  if (!stored || !stored.privateKey || stored.privateKey.extractable) {
    stored = await generateKey();
    await keyDb("readwrite", (store) => store.put(stored, KEY_ID));
  }
  dpopKey = stored;
  return dpopKey;
}

async function proof(method, url, token) {
  const key = await loadKey();
  const claims = {
    jti: b64url(crypto.getRandomValues(new Uint8Array(16))),
    htm: method,
    htu: new URL(url, location.href).href.split(/[?#]/)[0],
    iat: Math.floor((Date.now() + clockSkewMs) / 1000),
  };
  if (token) {
    claims.ath = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token)));
  }
  if (dpopNonce) claims.nonce = dpopNonce;
  const header = { typ: "dpop+jwt", alg: key.alg, jwk: key.jwk };
  const input = `${b64urlText(JSON.stringify(header))}.${b64urlText(JSON.stringify(claims))}`;
  const algorithm = key.alg === "Ed25519" ? { name: "Ed25519" } : { name: "ECDSA", hash: "SHA-256" };
  // WebCrypto's ECDSA signature is r||s, the form JWS uses (RFC 7518 §3.4)
  const signature = await crypto.subtle.sign(algorithm, key.privateKey, new TextEncoder().encode(input));
  return `${input}.${b64url(signature)}`;
}

// Learn the server's nonce and clock from any answer; true if a retry with them may succeed.
function noteServer(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) clockSkewMs = date - Date.now();
  const nonce = response.headers.get("DPoP-Nonce");
  if (nonce) dpopNonce = nonce;
  return response.status === 400 || response.status === 401;
}

// A fetch with a fresh proof, sent once more if the gateway refused the proof itself (a nonce
// it wants, or our clock off): each attempt signs a new proof with what the answer taught us.
async function fetchWithProof(method, path, init, token) {
  const send = async () => {
    const headers = { ...(init.headers || {}), DPoP: await proof(method, path, token) };
    return fetch(path, { ...init, method, headers, credentials: "same-origin" });
  };
  let response = await send();
  if (noteServer(response) && (await proofRefused(response))) {
    response = await send();
    noteServer(response);
  }
  return response;
}

async function proofRefused(response) {
  const challenge = response.headers.get("WWW-Authenticate") || "";
  if (/error="(invalid_dpop_proof|use_dpop_nonce)"/.test(challenge)) return true;
  if (response.status !== 400) return false;
  const data = await readJson(response.clone());
  const code = data && data.error && data.error.code;
  return code === "invalid_dpop_proof" || code === "use_dpop_nonce";
}

// ---- tokens -------------------------------------------------------------------------------

function acceptToken(body) {
  if (body.token_type !== "DPoP") {
    // never carry on with a session that is not bound to our key
    throw new Error("the gateway did not bind the session to this browser's key");
  }
  accessToken = body.access_token;
  scheduleRefresh(Number(body.expires_in));
}

function forgetToken() {
  accessToken = null;
  if (refreshTimer !== null) {
    clearTimeout(refreshTimer);
    refreshTimer = null;
  }
}

function scheduleRefresh(expiresIn) {
  if (refreshTimer !== null) {
    clearTimeout(refreshTimer);
  }
  // Short-lived tokens (tests, tight deployments) refresh at 80% of their life instead.
  const lead = expiresIn > 2 * REFRESH_MARGIN_SECONDS ? expiresIn - REFRESH_MARGIN_SECONDS : expiresIn * 0.8;
  refreshTimer = setTimeout(refreshOnTime, Math.max(1, lead) * 1000);
}

async function refreshOnTime() {
  refreshTimer = null;
  if (await refreshAccessToken()) return;
  if (refreshWait !== null) {
    // the gateway is busy or limiting us: the session lives on, try again when it said
    setStatus(`The gateway cannot answer right now; retrying in ${seconds(refreshWait)}.`);
    refreshTimer = setTimeout(refreshOnTime, refreshWait * 1000);
    return;
  }
  showLoggedOut("Your session ended. Please log in again.");
}

// One refresh at a time: concurrent 401s share the same rotation instead of each spending
// the refresh token (the second would look like reuse to the server).
function refreshAccessToken() {
  if (refreshInFlight === null) {
    refreshInFlight = doRefresh().finally(() => {
      refreshInFlight = null;
    });
  }
  return refreshInFlight;
}

async function doRefresh() {
  let response;
  refreshWait = null;
  try {
    response = await fetchWithProof("POST", `${API}/auth/refresh`, {});
  } catch {
    refreshWait = 5; // no answer at all: the session is not known to have ended
    return false;
  }
  if (!response.ok) {
    if (response.status === 429 || response.status >= 502) {
      refreshWait = retryAfterSeconds(response) || 5;
    } else {
      forgetToken();
    }
    return false;
  }
  try {
    acceptToken(await response.json());
  } catch {
    forgetToken();
    return false;
  }
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  return true;
}

// An API call with the access token and a proof; on 401 it refreshes once and retries once.
async function api(method, path, body) {
  const send = () => {
    const headers = { Authorization: `DPoP ${accessToken}` };
    const init = { headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetchWithProof(method, `${API}${path}`, init, accessToken);
  };
  let response = await send();
  if (response.status === 401 && (await refreshAccessToken())) {
    response = await send();
  }
  if (response.status === 401) {
    if (refreshWait !== null) {
      // not the end of the session: the refresh was only asked to wait
      throw new ApiError(429, { error: { code: "rate_limited" } }, refreshWait);
    }
    showLoggedOut("Your session ended. Please log in again.");
    throw new Error("not logged in");
  }
  if (!response.ok) {
    throw await apiError(response);
  }
  return response.status === 204 ? null : response.json();
}

// ---- views --------------------------------------------------------------------------------

function showLoggedOut(message, keepHint = false) {
  forgetToken();
  $("app-section").hidden = true;
  $("login-section").hidden = false;
  $("notes").replaceChildren();
  $("sessions").replaceChildren();
  $("events").replaceChildren();
  for (const id of ["profile-email", "profile-id", "profile-roles"]) {
    $(id).textContent = "";
  }
  clearMessages();
  setStatus(message, keepHint);
  if (!keepHint) rememberSession(false);
  document.body.dataset.state = "logged-out";
}

async function showLoggedIn() {
  $("login-section").hidden = true;
  $("app-section").hidden = false;
  try {
    await Promise.all([loadProfile(), loadNotes(), loadSessions()]);
    setStatus(`Logged in as ${$("profile-email").textContent}.`);
    document.body.dataset.state = "logged-in";
  } catch (err) {
    if (accessToken !== null) {
      setStatus(friendly(err, "load"), true);
    }
  }
}

async function loadProfile() {
  const me = await api("GET", "/me");
  $("profile-email").textContent = me.email;
  $("profile-id").textContent = me.id;
  $("profile-roles").textContent = (me.roles || []).join(", ");
}

async function loadNotes() {
  const data = await api("GET", "/notes");
  const items = data.items.map((note) => {
    const li = document.createElement("li");
    li.className = "note";
    const title = document.createElement("span");
    title.className = "note-title";
    title.textContent = note.title;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    remove.addEventListener("click", () => deleteNote(note.id, remove));
    li.append(title, remove);
    if (note.body) {
      const body = document.createElement("p");
      body.className = "note-body";
      body.textContent = note.body;
      li.append(body);
    }
    return li;
  });
  $("notes").replaceChildren(...items);
}

async function loadSessions() {
  const data = await api("GET", "/auth/sessions");
  const items = data.sessions.map((session) => {
    const li = document.createElement("li");
    li.className = "session";
    const label = document.createElement("span");
    label.textContent = `${describeClient(session.user_agent)} — logged in ${localTime(session.created_at)}`;
    if (session.key_bound) {
      label.textContent += " [key-bound]";
    }
    if (session.current) {
      label.textContent += " (this tab)";
    }
    const meta = document.createElement("div");
    meta.className = "muted";
    // the gateway updates last_used_at when the session refreshes (not on every API call)
    const refreshed =
      session.last_used_at === session.created_at
        ? "not refreshed yet"
        : `last refreshed ${localTime(session.last_used_at)}`;
    meta.textContent = `${refreshed} · expires ${localTime(session.expires_at)} · from ${session.ip || "an unknown address"}`;
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.textContent = "Revoke";
    revoke.addEventListener("click", () => revokeSession(session.id, session.current));
    li.append(label, " ", revoke, meta);
    return li;
  });
  $("sessions").replaceChildren(...items);
  await loadEvents();
}

// The account's own audit events in plain words (docs/AUDIT.md has the catalogue).
const EVENT_WORDS = {
  login_succeeded: "new login",
  login_failed: "failed login attempt",
  login_rate_limited: "login attempts rate limited",
  refresh_reused: "a replayed session token: that session was ended",
  logout: "logged out",
  logout_all: "logged out everywhere",
  session_revoked: "a session was revoked",
  password_changed: "password changed",
  password_change_refused: "password change refused (wrong current password)",
  account_disabled: "account disabled",
  account_enabled: "account enabled",
  roles_changed: "roles changed",
  sessions_ended: "every session ended by an operator",
};

async function loadEvents() {
  let data;
  try {
    data = await api("GET", "/auth/events?limit=10");
  } catch (err) {
    // the trail is a nice-to-have on this page: the sessions list stands without it
    $("events").replaceChildren();
    return;
  }
  const items = data.items
    .filter((event) => event.type in EVENT_WORDS)
    .map((event) => {
      const li = document.createElement("li");
      const where = event.ip ? ` from ${event.ip}` : "";
      li.textContent = `${localTime(event.at)}: ${EVENT_WORDS[event.type]}${where}`;
      return li;
    });
  $("events").replaceChildren(...items);
}

// Times in the reader's own time zone and format (the API speaks UTC, ISO 8601).
function localTime(iso) {
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? iso : when.toLocaleString();
}

// A short name for a session's client (the user agent's first 60 characters when none fits).
function describeClient(userAgent) {
  if (!userAgent) return "an unknown client";
  const known = [
    [/Edg\//, "Edge"],
    [/Firefox\//, "Firefox"],
    [/Chrome\//, "Chrome"],
    [/Safari\//, "Safari"],
    [/python-httpx|python-requests|curl\//i, "a script"],
  ];
  for (const [pattern, name] of known) {
    if (pattern.test(userAgent)) return name;
  }
  return userAgent.slice(0, 60);
}

// ---- the session hint ---------------------------------------------------------------------
//
// The refresh cookie is HttpOnly, so the page cannot see whether it has one. Asking the gateway
// on every first visit would log a red 401 in the console of everyone who never logged in; a
// hint in IndexedDB (next to the key: a flag, never a token) says "try a refresh". A missing or
// stale hint only costs a login form or one refused refresh.

const HINT_ID = "session-hint";

async function hasSessionHint() {
  try {
    return Boolean(await keyDb("readonly", (store) => store.get(HINT_ID)));
  } catch {
    return false;
  }
}

function rememberSession(active) {
  keyDb("readwrite", (store) => (active ? store.put(true, HINT_ID) : store.delete(HINT_ID))).catch(
    () => {},
  );
}

// ---- actions ------------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  say("login-message", "Logging in…");
  let response;
  try {
    await loadKey();
  } catch (err) {
    say("login-message", `Cannot log in safely: ${err.message}.`, true);
    return;
  }
  try {
    response = await fetchWithProof("POST", `${API}/auth/login`, {
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email: $("email").value, password: $("password").value }),
    });
  } catch (err) {
    sayError("login-message", err, "login");
    return;
  }
  if (!response.ok) {
    sayError("login-message", await apiError(response), "login", $("login-button"));
    return;
  }
  const data = await readJson(response);
  $("password").value = "";
  try {
    acceptToken(data);
  } catch (err) {
    say("login-message", err.message, true);
    return;
  }
  rememberSession(true);
  say("login-message", "");
  await showLoggedIn();
}

async function addNote(event) {
  event.preventDefault();
  try {
    await api("POST", "/notes", { title: $("note-title").value, body: $("note-body").value });
    $("note-form").reset();
    await loadNotes();
    say("note-message", "Note saved.");
  } catch (err) {
    if (accessToken !== null) sayError("note-message", err, "note", $("note-button"));
  }
}

async function deleteNote(id, button) {
  button.disabled = true;
  try {
    await api("DELETE", `/notes/${encodeURIComponent(id)}`);
    await loadNotes();
    say("note-message", "Note deleted.");
  } catch (err) {
    button.disabled = false;
    if (accessToken !== null) {
      sayError("note-message", err, "note");
      if (err instanceof ApiError && err.status === 404) await loadNotes();
    }
  }
}

// This session carries on under a new id (the answer holds its new tokens and sets its new
// refresh cookie); every other session of the account ends. A wrong current password is a 403.
async function changePassword(event) {
  event.preventDefault();
  let data;
  try {
    data = await api("POST", "/auth/password", {
      current_password: $("current-password").value,
      new_password: $("new-password").value,
    });
  } catch (err) {
    if (accessToken !== null) sayError("password-message", err, "password", $("password-button"));
    return;
  } finally {
    $("password-form").reset();
  }
  try {
    acceptToken(data);
  } catch (err) {
    say("password-message", err.message, true);
    return;
  }
  await loadSessions();
  say("password-message", "Password changed. Your other sessions have ended.");
}

async function revokeSession(id, current) {
  try {
    await api("DELETE", `/auth/sessions/${encodeURIComponent(id)}`);
  } catch (err) {
    if (accessToken !== null) {
      sayError("sessions-message", err, "session");
      if (err instanceof ApiError && err.status === 404) await loadSessions();
    }
    return;
  }
  if (current) {
    // Our own family is gone; the refresh cookie is now useless, so clear it too.
    await logout();
    return;
  }
  await loadSessions();
  say("sessions-message", "Session revoked.");
}

async function logout() {
  try {
    await fetchWithProof("POST", `${API}/auth/logout`, {});
  } catch {
    // Forget the token locally even when the gateway is unreachable.
  }
  showLoggedOut("Logged out.");
}

async function logoutAll() {
  try {
    await api("POST", "/auth/logout-all");
  } catch {
    // The call clears the cookie on success; on failure fall through to a local logout.
  }
  showLoggedOut("Logged out of every session.");
}

async function start() {
  $("login-form").addEventListener("submit", login);
  $("note-form").addEventListener("submit", addNote);
  $("password-form").addEventListener("submit", changePassword);
  $("logout-button").addEventListener("click", logout);
  $("logout-all-button").addEventListener("click", logoutAll);
  $("sessions-reload").addEventListener("click", () =>
    loadSessions()
      .then(() => say("sessions-message", ""))
      .catch((err) => {
        if (accessToken !== null) sayError("sessions-message", err, "session");
      }),
  );
  // A reload loses the in-memory token; the HttpOnly refresh cookie brings the session back.
  // Only try when this browser logged in before (see "the session hint").
  if ((await hasSessionHint()) && (await refreshAccessToken())) {
    await showLoggedIn();
  } else if (refreshWait !== null) {
    // the session may well be alive: say when to come back, and keep the hint
    showLoggedOut(`The gateway cannot answer right now. Reload the page in ${seconds(refreshWait)}.`, true);
  } else {
    showLoggedOut("Please log in.");
  }
}

start();
