// tokengate demo client: plain JavaScript, no build step.
//
// The access token lives only in the `accessToken` variable below: never in localStorage,
// sessionStorage or a cookie, so a script injected later cannot find it at rest, and it is gone
// when the tab closes. The refresh token is an HttpOnly cookie this script cannot read; the
// browser sends it only to /api/v1/auth/* on this origin. Reloading the page therefore starts
// with POST /api/v1/auth/refresh to get a fresh access token from that cookie.
//
// Everything the server returns is written with textContent, never innerHTML, so a note titled
// "<img onerror=...>" stays text.
"use strict";

const API = "/api/v1";
// Refresh this many seconds before the access token expires, so a request never races expiry.
const REFRESH_MARGIN_SECONDS = 30;

let accessToken = null;
let refreshTimer = null;
let refreshInFlight = null;

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function errorMessage(body, fallback) {
  if (body && body.error && typeof body.error.message === "string") {
    return body.error.message;
  }
  return fallback;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// ---- tokens -------------------------------------------------------------------------------

function acceptToken(body) {
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
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    if (!(await refreshAccessToken())) {
      showLoggedOut("Your session ended. Please log in again.");
    }
  }, Math.max(1, lead) * 1000);
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
  try {
    response = await fetch(`${API}/auth/refresh`, { method: "POST", credentials: "same-origin" });
  } catch {
    return false;
  }
  if (!response.ok) {
    forgetToken();
    return false;
  }
  acceptToken(await response.json());
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  return true;
}

// An API call with the access token; on 401 it refreshes once and retries once.
async function api(method, path, body) {
  const send = () => {
    const headers = { Authorization: `Bearer ${accessToken}` };
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(`${API}${path}`, init);
  };
  let response = await send();
  if (response.status === 401 && (await refreshAccessToken())) {
    response = await send();
  }
  if (response.status === 401) {
    showLoggedOut("Your session ended. Please log in again.");
    throw new Error("not logged in");
  }
  if (!response.ok) {
    const data = await readJson(response);
    throw new Error(errorMessage(data, `request failed (${response.status})`));
  }
  return response.status === 204 ? null : response.json();
}

// ---- views --------------------------------------------------------------------------------

function showLoggedOut(message) {
  forgetToken();
  $("app-section").hidden = true;
  $("login-section").hidden = false;
  $("notes").replaceChildren();
  $("sessions").replaceChildren();
  for (const id of ["profile-email", "profile-id", "profile-roles"]) {
    $(id).textContent = "";
  }
  setStatus(message);
  document.body.dataset.state = "logged-out";
}

async function showLoggedIn() {
  $("login-section").hidden = true;
  $("app-section").hidden = false;
  try {
    await Promise.all([loadProfile(), loadNotes(), loadSessions()]);
    setStatus("Logged in.");
    document.body.dataset.state = "logged-in";
  } catch (err) {
    if (accessToken !== null) {
      setStatus(err.message, true);
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
    li.append(title);
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
    label.textContent = `${session.user_agent || "unknown client"} — since ${session.created_at}`;
    if (session.current) {
      label.textContent += " (this tab)";
    }
    const meta = document.createElement("div");
    meta.className = "muted";
    meta.textContent = `last used ${session.last_used_at}, ip ${session.ip || "?"}`;
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.textContent = "Revoke";
    revoke.addEventListener("click", () => revokeSession(session.id, session.current));
    li.append(label, " ", revoke, meta);
    return li;
  });
  $("sessions").replaceChildren(...items);
}

// ---- actions ------------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  setStatus("Logging in…");
  let response;
  try {
    response = await fetch(`${API}/auth/login`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email: $("email").value, password: $("password").value }),
    });
  } catch {
    setStatus("The gateway cannot be reached.", true);
    return;
  }
  const data = await readJson(response);
  if (!response.ok) {
    setStatus(errorMessage(data, `login failed (${response.status})`), true);
    return;
  }
  $("password").value = "";
  acceptToken(data);
  await showLoggedIn();
}

async function addNote(event) {
  event.preventDefault();
  try {
    await api("POST", "/notes", { title: $("note-title").value, body: $("note-body").value });
    $("note-form").reset();
    await loadNotes();
    setStatus("Note saved.");
  } catch (err) {
    if (accessToken !== null) setStatus(err.message, true);
  }
}

async function revokeSession(id, current) {
  try {
    await api("DELETE", `/auth/sessions/${encodeURIComponent(id)}`);
  } catch (err) {
    if (accessToken !== null) setStatus(err.message, true);
    return;
  }
  if (current) {
    // Our own family is gone; the refresh cookie is now useless, so clear it too.
    await logout();
    return;
  }
  await loadSessions();
  setStatus("Session revoked.");
}

async function logout() {
  try {
    await fetch(`${API}/auth/logout`, { method: "POST", credentials: "same-origin" });
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
  $("logout-button").addEventListener("click", logout);
  $("logout-all-button").addEventListener("click", logoutAll);
  $("sessions-reload").addEventListener("click", () => loadSessions().catch(() => {}));
  // A reload loses the in-memory token; the HttpOnly refresh cookie brings the session back.
  if (await refreshAccessToken()) {
    await showLoggedIn();
  } else {
    showLoggedOut("Please log in.");
  }
}

start();
