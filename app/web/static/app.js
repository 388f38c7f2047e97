// The settings and approvals pages. No framework and no build step: one file that
// calls the service's JSON API with the token the user pasted.
//
// Rules this file keeps:
// - Every value from the API (which carries what Telegram and users sent) reaches
//   the page through textContent or text nodes, never through innerHTML. The
//   Content-Security-Policy the service sends blocks inline script besides.
// - The API token lives in sessionStorage only (this tab, until it closes or the
//   user signs out) and travels in the Authorization header only: never in a URL,
//   a cookie or a log line.
// - What a role may do is the server's decision; the page only leaves out what the
//   role cannot do, and shows the server's refusal if it comes anyway.
"use strict";

(() => {
  const TOKEN_KEY = "integrations.apiToken";
  const POLL_MS = 3000;
  const PAGE_LIMIT = 200;
  const MAX_PAGES = 10;
  const CONTEXT_MESSAGES = 5;
  const BOTFATHER_GUIDE = "https://core.telegram.org/bots/tutorial#obtain-your-bot-token";

  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const whoText = document.getElementById("who-text");

  const state = {
    me: null,
    // Timers of the view on screen; a new view stops them.
    timers: [],
    // Bumped on every navigation: work started by an older view drops its result.
    view: 0,
    // Set by a navigation the user made: the next view's heading takes focus as soon
    // as it is drawn (not once its data arrives, which would pull focus back from
    // wherever the user has tabbed to meanwhile).
    focusOnView: false,
  };

  // -- building the page from text ------------------------------------------------

  // el("p", {class: "x"}, "text", child, ...): strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (value === true) node.setAttribute(name, "");
      else node.setAttribute(name, String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.firstChild.remove();
    return node;
  }

  function notice(kind, ...children) {
    // Errors interrupt (role=alert); other outcomes are announced politely.
    const role = kind === "error" ? "alert" : "status";
    return el("div", { class: `notice ${kind}`, role }, ...children);
  }

  function facts(rows) {
    const list = el("dl", { class: "facts" });
    for (const [term, ...value] of rows) {
      if (value.length === 1 && (value[0] === null || value[0] === undefined)) continue;
      list.append(el("dt", { text: term }), el("dd", {}, ...value));
    }
    return list;
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function timeEl(iso) {
    return el("time", { datetime: iso, text: when(iso) });
  }

  // Telegram's HTML subset, as the message will look: parsed into an inert
  // document (DOMParser runs no script and loads nothing), then rebuilt from text
  // nodes and a short list of harmless elements. Anything else keeps its text only.
  const TELEGRAM_TAGS = {
    B: "strong", STRONG: "strong", I: "em", EM: "em", U: "u", INS: "u",
    S: "s", STRIKE: "s", DEL: "s", CODE: "code", PRE: "pre", BLOCKQUOTE: "blockquote",
    "TG-SPOILER": "span", SPAN: "span", A: "a",
  };

  function telegramHtml(text) {
    const parsed = new DOMParser().parseFromString(text, "text/html");
    const fragment = document.createDocumentFragment();
    rebuild(parsed.body, fragment);
    return fragment;
  }

  function rebuild(from, to) {
    for (const node of from.childNodes) {
      if (node.nodeType === Node.TEXT_NODE) {
        to.append(document.createTextNode(node.data));
      } else if (node.nodeType === Node.ELEMENT_NODE) {
        const tag = TELEGRAM_TAGS[node.tagName];
        if (!tag) {
          rebuild(node, to);
          continue;
        }
        const copy = document.createElement(tag);
        if (tag === "a") {
          const href = node.getAttribute("href") || "";
          if (/^(https?:|tg:|mailto:)/i.test(href)) {
            copy.setAttribute("href", href);
            copy.setAttribute("rel", "noopener noreferrer");
            copy.setAttribute("target", "_blank");
          }
        }
        if (tag === "span" && (node.tagName === "TG-SPOILER" || node.classList.contains("tg-spoiler"))) {
          copy.className = "spoiler";
        }
        rebuild(node, copy);
        to.append(copy);
      }
    }
  }

  function preview(message) {
    const box = el("div", { class: "preview" });
    if (message.parse_mode === "HTML") box.append(telegramHtml(message.text));
    else box.textContent = message.text;
    return box;
  }

  // -- the API --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `The service answered ${status}.`);
      this.status = status;
      this.code = error.code || "http_error";
      this.field = error.field || null;
      this.detail = error;
    }
  }

  // Thrown after a 401 has sent the user back to sign-in: callers just stop.
  class SignedOut extends Error {}

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, {
        error: { code: "network_error", message: "The service could not be reached; check the connection and try again." },
      });
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (response.status === 401 && bearer) {
      const refused = new ApiError(401, data);
      signOut(`The service no longer accepts your API token (${refused.message}) ` +
        "It may have been revoked. Sign in again with a valid token.");
      throw new SignedOut();
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // Every page of a list (bounded: the UI shows recent things, not archives).
  async function listAll(path) {
    const items = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page += 1) {
      const separator = path.includes("?") ? "&" : "?";
      const url = `${path}${separator}limit=${PAGE_LIMIT}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      const answer = await api("GET", url);
      items.push(...answer.items);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    return items;
  }

  function isAdmin() { return state.me && state.me.role === "admin"; }
  function canReview() { return state.me && (state.me.role === "admin" || state.me.role === "reviewer"); }
  function canSend() { return state.me && (state.me.role === "admin" || state.me.role === "sender"); }

  // Hints for the errors a person can do something about; the message itself is
  // the service's (for Telegram's refusals, Telegram's own description).
  const HINTS = {
    invalid_bot_token: "Telegram rejected this token. Copy it again from @BotFather (/mybots, then API Token); a token regenerated there replaces the old one.",
    not_a_bot: "This token belongs to a user account, not a bot. Create a bot with @BotFather and use its token.",
    bot_already_connected: "This bot is already connected to another workspace. Disconnect it there first, or create a new bot with @BotFather.",
    bot_already_connected_here: "This bot is already connected to this workspace: open its connection instead.",
    different_bot: "This token belongs to another bot. Replace a token only with the same bot's regenerated token.",
    telegram_unavailable: "Telegram could not be reached. Nothing was changed; try again in a minute.",
    telegram_error: "Telegram refused the request. Check the reason above; Resync retries once it is fixed.",
    validation_error: "A bot token looks like 123456789:AAF... : digits, a colon, then 35 or more letters, digits, - or _.",
    operation_in_progress: "Another change to this connection is running; try again in a moment.",
    rotation_unsettled: "The last secret rotation did not reach Telegram: press Resync first.",
    rate_limited: "Too many checks in a short time; wait a little and try again.",
    forbidden: "Your API token's role does not allow this.",
    self_approval: "You asked for this message, so another reviewer has to decide it.",
    connection_deleted: "This conversation's connection was disconnected; messages can no longer be sent through it.",
    network_error: "",
  };

  function errorNotice(error, title) {
    if (error instanceof SignedOut) throw error;
    const hint = HINTS[error.code];
    const children = [
      el("p", {}, el("strong", { text: title || "That did not work." }), " Reason: ", error.message),
    ];
    if (hint) children.push(el("p", { class: "hint" }, el("strong", { text: "What to do:" }), " ", hint));
    if (error.code === "bot_already_connected_here" && error.detail.connection_id) {
      children.push(el("p", {}, el("a", { href: `#/connections/${error.detail.connection_id}`, text: "Open the existing connection" })));
    }
    return notice("error", ...children);
  }

  // -- names for ids --------------------------------------------------------------

  async function connectionsById() {
    const connections = await listAll("/api/v1/connections");
    return new Map(connections.map((c) => [c.id, c]));
  }

  async function conversationsById() {
    const conversations = await listAll("/api/v1/conversations");
    return new Map(conversations.map((c) => [c.id, c]));
  }

  // Token names are admin-only; other roles see "you" or a short id.
  async function tokenNames() {
    if (!isAdmin()) return new Map();
    const tokens = await listAll("/api/v1/tokens");
    return new Map(tokens.map((t) => [t.id, `${t.name} (${t.role})`]));
  }

  function tokenLabel(names, tokenId) {
    if (state.me && tokenId === state.me.token_id) return `you (${state.me.name})`;
    return names.get(tokenId) || `API token ${String(tokenId).slice(0, 8)}`;
  }

  function conversationLabel(conversation) {
    if (!conversation) return null;
    return conversation.title || `Chat ${conversation.chat_id}`;
  }

  function botLabel(connection) {
    const bot = connection.bot;
    return bot.username ? `@${bot.username} (${bot.first_name})` : bot.first_name;
  }

  const STATUS_WORDS = {
    active: ["Active", "good"],
    degraded: ["Degraded", "warn"],
    action_required: ["Action required", "bad"],
    healthy: ["Healthy", "good"],
  };

  function statusBadge(status) {
    const [words, kind] = STATUS_WORDS[status] || [String(status), ""];
    return el("span", { class: `badge ${kind}`, text: words });
  }

  const MESSAGE_STATUS = {
    pending_approval: "waiting for approval",
    queued: "approved, queued for sending",
    sending: "sending",
    sent: "sent",
    failed: "failed",
    rejected: "rejected",
    expired: "expired without a decision",
    cancelled: "cancelled",
  };

  function messageStatus(status) {
    return MESSAGE_STATUS[status] || String(status);
  }

  // -- navigation -----------------------------------------------------------------

  const ROUTES = [
    [/^#\/connections$/, viewConnections, "connections"],
    [/^#\/connections\/new$/, viewAddConnection, "connections"],
    [/^#\/connections\/([0-9a-f-]{36})$/, viewConnection, "connections"],
    [/^#\/approvals$/, viewApprovals, "approvals"],
    [/^#\/inbox$/, viewInbox, "inbox"],
    [/^#\/inbox\/([0-9a-f-]{36})$/, viewInbox, "inbox"],
  ];

  function stopTimers() {
    for (const timer of state.timers) clearInterval(timer);
    state.timers = [];
  }

  // Runs `work` every `ms` while this view is on screen, one run at a time.
  function every(ms, work) {
    const view = state.view;
    let busy = false;
    const timer = setInterval(() => {
      if (view !== state.view || busy) return;
      busy = true;
      work().catch((error) => {
        if (!(error instanceof SignedOut)) console.warn("refresh failed", error.code || error);
      }).finally(() => {
        busy = false;
      });
    }, ms);
    state.timers.push(timer);
  }

  function current(view) {
    return view === state.view;
  }

  function startView(title) {
    stopTimers();
    state.view += 1;
    clear(main);
    document.title = `${title} · Integrations settings`;
    const heading = el("h1", { tabindex: "-1", text: title });
    main.append(heading);
    if (state.focusOnView) {
      state.focusOnView = false;
      heading.focus();
    }
    return heading;
  }

  function showChrome(section) {
    const signedIn = Boolean(state.me);
    nav.hidden = !signedIn;
    who.hidden = !signedIn;
    if (signedIn) {
      whoText.textContent = `${state.me.name} · ${state.me.role} · ${state.me.workspace.name}`;
    }
    for (const link of nav.querySelectorAll("a")) {
      if (link.dataset.section === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  async function route() {
    let hash = location.hash || "#/connections";
    if (!hash.startsWith("#/")) {
      // Not a view's address: keep the view on screen, or start at the list.
      if (state.view > 0) return;
      hash = "#/connections";
    }
    if (!token()) {
      viewSignIn(null);
      return;
    }
    try {
      if (!state.me) state.me = await api("GET", "/api/v1/me");
    } catch (error) {
      if (error instanceof SignedOut) return;
      viewSignIn(error.message);
      return;
    }
    const found = ROUTES.map(([pattern, view, section]) => [hash.match(pattern), view, section])
      .find(([match]) => match);
    if (!found) {
      showChrome(null);
      startView("Page not found");
      main.append(el("p", {}, el("a", { href: "#/connections", text: "Go to connections" })));
      return;
    }
    const [match, view, section] = found;
    showChrome(section);
    try {
      await view(...match.slice(1));
    } catch (error) {
      if (error instanceof SignedOut) return;
      main.append(errorNotice(error, "This page could not be loaded."));
    }
  }

  function focusHeading() {
    const heading = main.querySelector("h1");
    if (heading) heading.focus();
  }

  window.addEventListener("hashchange", () => {
    state.focusOnView = true;
    route();
  });

  // -- sign in and out --------------------------------------------------------------

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    viewSignIn(reason);
  }

  // The skip link moves focus without changing the address (which names the view).
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    main.focus();
  });

  document.getElementById("sign-out").addEventListener("click", () => {
    signOut(null);
    focusHeading();
  });

  function viewSignIn(reason) {
    showChrome(null);
    startView("Sign in");
    if (reason) main.append(notice("error", el("p", { text: reason })));
    const input = el("input", {
      id: "api-token", name: "api-token", type: "password", autocomplete: "off",
      spellcheck: "false", required: true, "aria-describedby": "api-token-help",
    });
    const result = el("div");
    const form = el("form", { class: "panel", novalidate: true },
      el("label", { for: "api-token", text: "API token" }),
      input,
      el("p", { id: "api-token-help", class: "help", text:
        "Paste an API token of your workspace (it starts with wsk_). It is kept in this browser tab only, and forgotten when you sign out or close the tab." }),
      el("button", { type: "submit", text: "Sign in" }),
      result,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const pasted = input.value.trim();
      input.value = "";
      clear(result);
      if (!pasted) {
        result.append(notice("error", el("p", { text: "Paste an API token first." })));
        input.focus();
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, pasted);
      try {
        state.me = await api("GET", "/api/v1/me");
      } catch (error) {
        if (error instanceof SignedOut) {
          // api() has shown sign-in again; say it was this token.
          const shown = main.querySelector(".notice p");
          if (shown) shown.textContent = "The service did not accept this API token. Check that you copied all of it and that it has not been revoked.";
          main.querySelector("input").focus();
          return;
        }
        sessionStorage.removeItem(TOKEN_KEY);
        result.append(errorNotice(error, "Could not sign in."));
        return;
      }
      if (location.hash === "" || location.hash === "#/connections") {
        state.focusOnView = true;
        await route();
      } else {
        location.hash = "#/connections";
      }
    });
    main.append(form);
  }

  // -- connections ------------------------------------------------------------------

  async function viewConnections() {
    startView("Connections");
    const view = state.view;
    if (isAdmin()) {
      main.append(el("p", {}, el("a", { class: "button", href: "#/connections/new", text: "Add connection" })));
    }
    const loading = el("p", { class: "muted", text: "Loading connections…" });
    main.append(loading);
    const connections = await listAll("/api/v1/connections");
    if (!current(view)) return;
    loading.remove();
    if (connections.length === 0) {
      main.append(el("p", { text: isAdmin()
        ? "No connections yet. Add one to receive and send Telegram messages."
        : "No connections yet. An admin can add one." }));
      return;
    }
    const list = el("ul", { class: "cards", "aria-label": "Connections" });
    for (const connection of connections) {
      const health = el("dd", { class: "health" }, el("span", { class: "muted", text: "Checking…" }));
      const status = el("dd", { class: "status" }, statusBadge(connection.status),
        connection.status_hint ? el("span", { class: "status-hint" }, " ", connection.status_hint) : null);
      const item = el("li", { class: "card connection", "data-connection-id": connection.id },
        el("h2", {}, el("a", { href: `#/connections/${connection.id}`, text: connection.name })),
        el("dl", { class: "facts" },
          el("dt", { text: "Status" }), status,
          el("dt", { text: "Mode" }), el("dd", { text: connection.mode }),
          el("dt", { text: "Bot" }), el("dd", { text: botLabel(connection) }),
          el("dt", { text: "Health" }), health,
        ),
      );
      list.append(item);
      checkHealth(connection.id, health, status, view);
    }
    main.append(list);
  }

  // The live check also moves the connection's status (the service records the
  // verdict), so the status shown is redrawn from it.
  async function checkHealth(connectionId, target, status, view) {
    let health;
    try {
      health = await api("GET", `/api/v1/connections/${connectionId}/health`);
    } catch (error) {
      if (error instanceof SignedOut || !current(view)) return;
      clear(target).append(el("span", { text: `Unknown: ${error.message}` }));
      return;
    }
    if (!current(view)) return;
    clear(target).append(statusBadge(health.verdict));
    if (health.hint) target.append(el("span", { class: "health-hint" }, " ", health.hint));
    clear(status).append(statusBadge(health.verdict === "healthy" ? "active" : health.verdict));
  }

  function viewAddConnection() {
    startView("Add connection: Telegram");
    main.prepend(el("p", { class: "breadcrumb" }, el("a", { href: "#/connections", text: "Connections" })));
    if (!isAdmin()) {
      main.append(el("p", { text: "Only an admin API token can add connections." }));
      return;
    }
    const tokenInput = el("input", {
      id: "bot-token", name: "bot-token", type: "password", autocomplete: "off",
      spellcheck: "false", required: true, "aria-describedby": "bot-token-help",
    });
    const nameInput = el("input", { id: "connection-name", name: "connection-name", type: "text", maxlength: "200" });
    const submit = el("button", { type: "submit", text: "Connect bot" });
    const result = el("div", { id: "add-result" });
    const form = el("form", { class: "panel", novalidate: true },
      el("p", {},
        "Create a bot with @BotFather in Telegram and copy the token it gives you. ",
        el("a", { href: BOTFATHER_GUIDE, target: "_blank", rel: "noopener noreferrer",
          text: "How BotFather gives you a token (Telegram's guide, opens in a new tab)" }),
      ),
      el("label", { for: "bot-token", text: "Bot token" }),
      tokenInput,
      el("p", { id: "bot-token-help", class: "help", text:
        "It looks like 123456789:AAF…. It is sent to the service once, stored encrypted and never shown again." }),
      el("label", { for: "connection-name", text: "Name (optional)" }),
      nameInput,
      el("p", { class: "help", text: "Leave empty to use the bot's name." }),
      submit,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const botToken = tokenInput.value.trim();
      // Cleared whatever the outcome: the token is never kept on the page.
      tokenInput.value = "";
      clear(result);
      if (!botToken) {
        result.append(notice("error", el("p", { text: "Paste the bot token from @BotFather first." })));
        tokenInput.focus();
        return;
      }
      const body = { bot_token: botToken };
      if (nameInput.value.trim()) body.name = nameInput.value.trim();
      submit.disabled = true;
      submit.textContent = "Connecting…";
      try {
        const connection = await api("POST", "/api/v1/connections/telegram", body);
        nameInput.value = "";
        const heading = el("h2", { tabindex: "-1", text: "Connected" });
        result.append(notice("good",
          heading,
          el("p", { class: "bot-name" }, "Bot: ", el("strong", { text: connection.bot.first_name }),
            connection.bot.username ? ` (@${connection.bot.username})` : ""),
          connection.warnings.length ? el("ul", {}, connection.warnings.map((w) => el("li", { text: w }))) : null,
          el("p", {}, el("a", { href: `#/connections/${connection.id}`, text: `Open ${connection.name}` })),
        ));
        heading.focus();
      } catch (error) {
        const shown = errorNotice(error, "Not connected.");
        result.append(shown);
        tokenInput.focus();
      } finally {
        submit.disabled = false;
        submit.textContent = "Connect bot";
      }
    });
    main.append(form, result);
  }

  async function viewConnection(connectionId) {
    const heading = startView("Connection");
    const view = state.view;
    main.prepend(el("p", { class: "breadcrumb" }, el("a", { href: "#/connections", text: "Connections" })));
    let connection = await api("GET", `/api/v1/connections/${connectionId}`);
    if (!current(view)) return;
    heading.textContent = connection.name;
    document.title = `${connection.name} · Integrations settings`;

    const overview = el("section", { class: "panel", "aria-labelledby": "overview-title" });
    function drawOverview() {
      clear(overview).append(
        el("h2", { id: "overview-title", text: "Overview" }),
        facts([
          ["Status", statusBadge(connection.status)],
          ["What to do", connection.status_hint],
          ["Mode", connection.mode],
          ["Bot", botLabel(connection)],
          ["Bot id", String(connection.bot.id)],
          ["Approval", connection.approval_mode === "required" ? "Required before sending" : "None: sent without review"],
          ["Daily limit", `${connection.daily_limit} messages`],
          ["Connected", timeEl(connection.created_at)],
        ]),
      );
    }
    drawOverview();

    const healthBox = el("div", { id: "health-result" }, el("p", { class: "muted", text: "Checking with Telegram…" }));
    const recheck = el("button", { type: "button", class: "secondary", text: "Check health again" });
    const healthSection = el("section", { class: "panel", "aria-labelledby": "health-title" },
      el("h2", { id: "health-title", text: "Health" }), healthBox, recheck);
    async function loadHealth() {
      recheck.disabled = true;
      try {
        const health = await api("GET", `/api/v1/connections/${connectionId}/health`);
        if (!current(view)) return;
        clear(healthBox).append(facts([
          ["Verdict", statusBadge(health.verdict)],
          ["What to do", health.hint],
          ["Webhook points here", health.webhook_url_is_ours ? "Yes" : "No"],
          ["Pending updates", health.pending_update_count === null ? null : String(health.pending_update_count)],
          ["Last error", health.last_error_message
            ? [health.last_error_message, health.last_error_date ? " (" : "", health.last_error_date ? timeEl(health.last_error_date) : "", health.last_error_date ? ")" : ""]
            : "None reported"],
        ]));
        // The verdict moved the connection's status: show the new one.
        connection = await api("GET", `/api/v1/connections/${connectionId}`);
        if (current(view)) drawOverview();
      } catch (error) {
        if (error instanceof SignedOut || !current(view)) return;
        clear(healthBox).append(errorNotice(error, "Health could not be checked."));
      } finally {
        recheck.disabled = false;
      }
    }
    recheck.addEventListener("click", loadHealth);
    main.append(overview, healthSection);
    loadHealth();

    if (!isAdmin()) {
      main.append(el("p", { class: "muted", text: "Changing a connection needs an admin API token." }));
      return;
    }
    main.append(settingsForm(), maintenance(), disconnect());

    function settingsForm() {
      const mode = el("select", { id: "approval-mode", name: "approval-mode" },
        el("option", { value: "required", text: "Required: a reviewer approves each message" }),
        el("option", { value: "none", text: "None: messages are sent without review" }));
      mode.value = connection.approval_mode;
      const limit = el("input", { id: "daily-limit", name: "daily-limit", type: "number", min: "1", max: "1000000", required: true });
      limit.value = String(connection.daily_limit);
      const result = el("div");
      const form = el("form", { class: "panel", "aria-labelledby": "settings-title" },
        el("h2", { id: "settings-title", text: "Settings" }),
        el("label", { for: "approval-mode", text: "Approval before sending" }), mode,
        el("label", { for: "daily-limit", text: "Daily limit (messages a day)" }), limit,
        el("div", {}, el("button", { type: "submit", text: "Save settings" })),
        result);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        clear(result);
        try {
          connection = await api("PATCH", `/api/v1/connections/${connectionId}`, {
            approval_mode: mode.value, daily_limit: Number(limit.value),
          });
          drawOverview();
          result.append(notice("good", el("p", { text: "Settings saved." })));
        } catch (error) {
          result.append(errorNotice(error, "Not saved."));
        }
      });
      return form;
    }

    function action(label, description, path, done) {
      const result = el("div");
      const button = el("button", { type: "button", class: "secondary", text: label });
      button.addEventListener("click", async () => {
        button.disabled = true;
        clear(result);
        try {
          connection = await api("POST", `/api/v1/connections/${connectionId}/${path}`);
          drawOverview();
          result.append(notice("good", el("p", { text: done })));
        } catch (error) {
          result.append(errorNotice(error, `${label}: did not work.`));
        } finally {
          button.disabled = false;
        }
      });
      return el("div", { class: "action" }, el("h3", { text: label }), el("p", { class: "help", text: description }), button, result);
    }

    function maintenance() {
      const newToken = el("input", { id: "new-bot-token", name: "new-bot-token", type: "password", autocomplete: "off", spellcheck: "false", required: true });
      const tokenResult = el("div");
      const tokenForm = el("form", { class: "action", novalidate: true },
        el("h3", { text: "Replace bot token" }),
        el("p", { class: "help", text: "After regenerating the token in @BotFather: history, settings and the webhook stay; the token must belong to the same bot." }),
        el("label", { for: "new-bot-token", text: "New bot token" }), newToken,
        el("div", {}, el("button", { type: "submit", class: "secondary", text: "Replace token" })),
        tokenResult);
      tokenForm.addEventListener("submit", async (event) => {
        event.preventDefault();
        const value = newToken.value.trim();
        newToken.value = "";
        clear(tokenResult);
        if (!value) {
          tokenResult.append(notice("error", el("p", { text: "Paste the new bot token first." })));
          return;
        }
        try {
          connection = await api("PUT", `/api/v1/connections/${connectionId}/token`, { bot_token: value });
          drawOverview();
          tokenResult.append(notice("good", el("p", { text: "Token replaced and the webhook registered again." })));
        } catch (error) {
          tokenResult.append(errorNotice(error, "Token not replaced."));
        }
      });
      return el("section", { class: "panel", "aria-labelledby": "maintenance-title" },
        el("h2", { id: "maintenance-title", text: "Maintenance" }),
        action("Resync webhook", "Registers this service's webhook with Telegram again: the fix when another app took the webhook over, or after an interrupted rotation.", "resync", "Webhook registered again."),
        action("Rotate webhook secret", "Gives Telegram a new secret for its deliveries; the previous one is still accepted for a few minutes.", "rotate-secret", "Secret rotated."),
        tokenForm);
    }

    function disconnect() {
      const section = el("section", { class: "panel", "aria-labelledby": "disconnect-title" },
        el("h2", { id: "disconnect-title", text: "Disconnect" }));
      const start = el("button", { type: "button", class: "danger", text: `Disconnect ${connection.name}…` });
      const confirmBox = el("div");
      section.append(el("p", { class: "help", text: "Stops this bot's messages here. You will be asked to confirm." }), start, confirmBox);
      start.addEventListener("click", () => {
        start.hidden = true;
        const title = el("h3", { tabindex: "-1", text: `Disconnect ${connection.name}?` });
        const yes = el("button", { type: "button", class: "danger", text: "Yes, disconnect" });
        const no = el("button", { type: "button", class: "secondary", text: "Keep the connection" });
        clear(confirmBox).append(el("div", { class: "notice warn", role: "group", "aria-labelledby": "confirm-title" },
          title,
          el("p", { text: "This will:" }),
          el("ul", {},
            el("li", { text: "remove the bot's webhook at Telegram, so it stops delivering here;" }),
            el("li", { text: "destroy the stored bot token and webhook secrets;" }),
            el("li", { text: "cancel the messages not sent yet (waiting for approval or queued)." })),
          el("p", { text: "Conversations and their messages stay in the inbox." }),
          yes, no));
        title.id = "confirm-title";
        title.focus();
        no.addEventListener("click", () => {
          clear(confirmBox);
          start.hidden = false;
          start.focus();
        });
        yes.addEventListener("click", async () => {
          yes.disabled = true;
          try {
            const outcome = await api("DELETE", `/api/v1/connections/${connectionId}`);
            showDisconnected(outcome);
          } catch (error) {
            yes.disabled = false;
            confirmBox.append(errorNotice(error, "Not disconnected."));
          }
        });
      });
      return section;
    }

    function showDisconnected(outcome) {
      startView(`${connection.name} is disconnected`);
      const ok = outcome.remote_cleanup === "ok";
      main.append(notice(ok ? "good" : "warn",
        el("p", { class: "remote-cleanup" }, "Remote cleanup: ", el("strong", { text: outcome.remote_cleanup })),
        el("p", { text: ok
          ? "The webhook was removed at Telegram; the stored credentials are destroyed and unsent messages cancelled."
          : "The connection is removed here, but Telegram could not be told." }),
        outcome.hint ? el("p", { class: "hint", text: outcome.hint }) : null),
        el("p", {}, el("a", { href: "#/connections", text: "Back to connections" })));
      focusHeading();
    }
  }

  // -- approvals --------------------------------------------------------------------

  async function viewApprovals() {
    startView("Approvals");
    const view = state.view;
    main.append(el("p", { class: "muted", text: canReview()
      ? "Messages waiting for a reviewer, oldest first. The list refreshes by itself."
      : "Messages waiting for a reviewer, oldest first. Your role sends messages; a reviewer or an admin decides them." }));
    const empty = el("p", { class: "empty", text: "Loading…" });
    const list = el("ul", { class: "cards", "aria-label": "Pending messages" });
    main.append(empty, list);
    const cards = new Map();
    let names = { connections: new Map(), conversations: new Map(), tokens: new Map() };

    async function refresh() {
      const pending = await listAll("/api/v1/messages?status=pending_approval");
      if (!current(view)) return;
      const needNames = pending.some((m) => !cards.has(m.id));
      if (needNames) {
        const [connections, conversations, tokens] = await Promise.all([connectionsById(), conversationsById(), tokenNames()]);
        names = { connections, conversations, tokens };
        if (!current(view)) return;
      }
      const pendingIds = new Set(pending.map((m) => m.id));
      for (const message of pending) {
        if (!cards.has(message.id)) {
          const card = approvalCard(message);
          cards.set(message.id, card);
          list.append(card.node);
        }
      }
      // Gone from the queue while shown: someone else decided, or it expired.
      for (const [id, card] of cards) {
        if (!pendingIds.has(id) && !card.decided) {
          const message = await api("GET", `/api/v1/messages/${id}`);
          if (!current(view)) return;
          card.decide(message, "Decided elsewhere: this message is");
        }
      }
      updateCount();
    }

    function updateCount() {
      const waiting = [...cards.values()].filter((c) => !c.decided).length;
      empty.textContent = waiting === 0 ? "Nothing is waiting for approval." : `${waiting} waiting.`;
    }

    function approvalCard(message) {
      const connection = names.connections.get(message.connection_id);
      const conversation = message.conversation_id ? names.conversations.get(message.conversation_id) : null;
      const chat = conversationLabel(conversation) || `Chat ${message.chat_id}`;
      const actions = el("div", { class: "actions" });
      const outcome = el("div", { class: "outcome" });
      const node = el("li", { class: "card approval", "data-message-id": message.id },
        el("h2", { text: `To ${chat}` }),
        facts([
          ["Connection", connection ? connection.name : "a disconnected connection"],
          ["Asked by", tokenLabel(names.tokens, message.requested_by)],
          ["Asked at", timeEl(message.created_at)],
          ["Expires", message.expires_at ? timeEl(message.expires_at) : null],
        ]),
        el("h3", { text: "Text as it will be sent" }),
        preview(message),
        message.parse_mode ? el("p", { class: "help", text: `Formatted by Telegram as ${message.parse_mode}.` }) : null,
        context(message),
        actions,
        outcome,
      );
      const card = { node, decided: false, decide };

      function decide(decided, prefix) {
        card.decided = true;
        node.classList.add("decided");
        clear(actions);
        const words = [prefix, ` ${messageStatus(decided.status)}`];
        if (decided.review_reason) words.push(`. Reason: ${decided.review_reason}`);
        clear(outcome).append(notice(decided.status === "rejected" ? "warn" : "good", el("p", {}, ...words, ".")));
        updateCount();
      }

      if (!canReview()) return card;
      if (state.me && message.requested_by === state.me.token_id) {
        actions.append(el("p", { class: "help", text: HINTS.self_approval }));
        return card;
      }
      const approve = el("button", { type: "button", text: "Approve" });
      const reject = el("button", { type: "button", class: "secondary", text: "Reject…" });
      actions.append(approve, reject);

      async function settle(call) {
        try {
          const decided = await call();
          decide(decided, "Done: this message is");
        } catch (error) {
          if (error instanceof SignedOut) return;
          if (error.code === "not_pending") {
            const latest = await api("GET", `/api/v1/messages/${message.id}`);
            decide(latest, "Someone else decided first: this message is");
            return;
          }
          clear(outcome).append(errorNotice(error, "Not decided."));
          for (const button of actions.querySelectorAll("button")) button.disabled = false;
        }
      }

      approve.addEventListener("click", () => {
        for (const button of actions.querySelectorAll("button")) button.disabled = true;
        settle(() => api("POST", `/api/v1/messages/${message.id}/approve`));
      });
      reject.addEventListener("click", () => {
        const fieldId = `reason-${message.id}`;
        const reason = el("textarea", { id: fieldId, name: "reason", required: true, maxlength: "1000" });
        const confirm = el("button", { type: "submit", class: "danger", text: "Reject with this reason" });
        const back = el("button", { type: "button", class: "secondary", text: "Keep it pending" });
        const form = el("form", { class: "reject-form", novalidate: true },
          el("label", { for: fieldId, text: "Reason for rejecting" }), reason, el("div", {}, confirm, back));
        clear(actions).append(form);
        reason.focus();
        back.addEventListener("click", () => {
          clear(actions).append(approve, reject);
          reject.focus();
        });
        form.addEventListener("submit", (event) => {
          event.preventDefault();
          const text = reason.value.trim();
          if (!text) {
            clear(outcome).append(notice("error", el("p", { text: "Say why it is rejected: the requester sees the reason." })));
            reason.focus();
            return;
          }
          confirm.disabled = true;
          back.disabled = true;
          settle(() => api("POST", `/api/v1/messages/${message.id}/reject`, { reason: text }));
        });
      });
      return card;
    }

    function context(message) {
      const box = el("div", { class: "context-box" }, el("h3", { text: "Recent messages in this conversation" }));
      if (!message.conversation_id) {
        box.append(el("p", { class: "muted", text: "Addressed by chat id: no conversation on record yet." }));
        return box;
      }
      const list = el("ol", { class: "context" }, el("li", { class: "muted", text: "Loading…" }));
      box.append(list);
      listAll(`/api/v1/conversations/${message.conversation_id}/messages`).then((rows) => {
        const recent = rows.filter((r) => r.outbound_message_id !== message.id).slice(-CONTEXT_MESSAGES);
        clear(list);
        if (recent.length === 0) list.append(el("li", { class: "muted", text: "No messages yet." }));
        for (const row of recent) list.append(threadLine(row));
      }).catch((error) => {
        if (error instanceof SignedOut) return;
        clear(list).append(el("li", { class: "muted", text: `Could not load: ${error.message}` }));
      });
      return box;
    }

    await refresh();
    every(POLL_MS, refresh);
  }

  function threadLine(row) {
    const inbound = row.direction === "inbound";
    const label = inbound ? "Received" : `Sent (${messageStatus(row.status)})`;
    return el("li", { class: inbound ? "inbound" : "outbound" },
      el("span", { class: "meta" }, `${label} · `, timeEl(row.sent_at)),
      el("div", { class: "message-text", text: row.text === null ? `[${row.content_kind}]` : row.text }));
  }

  // -- inbox ------------------------------------------------------------------------

  async function viewInbox(conversationId) {
    startView("Inbox");
    const view = state.view;
    const [conversations, connections] = await Promise.all([listAll("/api/v1/conversations"), connectionsById()]);
    if (!current(view)) return;
    const side = el("section", { "aria-labelledby": "conversations-title" },
      el("h2", { id: "conversations-title", text: "Conversations" }));
    const detail = el("section", { "aria-labelledby": "thread-title" });
    main.append(el("div", { class: "inbox" }, side, detail));
    const none = el("p", { text: "No conversations yet. They appear when someone writes to a connected bot." });
    const list = el("ul", { class: "conversation-list", "aria-label": "Conversations" });
    side.append(none, list);

    function drawConversations(rows) {
      none.hidden = rows.length > 0;
      // Redrawn on every refresh: keep the keyboard user's place.
      const focused = list.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
      clear(list);
      for (const conversation of rows) {
        const connection = connections.get(conversation.connection_id);
        list.append(el("li", {}, el("a", {
          href: `#/inbox/${conversation.id}`,
          "aria-current": conversation.id === conversationId ? "page" : null,
        },
        el("strong", { text: conversationLabel(conversation) }),
        el("br"),
        el("span", { class: "meta muted", text: `${conversation.chat_type} · ${connection ? connection.name : "disconnected"} · ` }),
        el("span", { class: "meta muted" }, timeEl(conversation.last_activity_at)))));
      }
      if (focused) {
        const again = [...list.querySelectorAll("a")].find((a) => a.getAttribute("href") === focused);
        if (again) again.focus();
      }
    }
    drawConversations(conversations);
    every(POLL_MS, async () => {
      const rows = await listAll("/api/v1/conversations");
      if (current(view)) drawConversations(rows);
    });

    const conversation = conversationId ? conversations.find((c) => c.id === conversationId) : null;
    if (!conversation) {
      detail.append(el("h2", { id: "thread-title", text: conversationId ? "Conversation not found" : "Choose a conversation" }));
      return;
    }
    const connection = connections.get(conversation.connection_id);
    detail.append(el("h2", { id: "thread-title", text: conversationLabel(conversation) }),
      el("p", { class: "muted", text: connection ? `Through ${connection.name}` : "Its connection was disconnected." }));
    const thread = el("ol", { class: "thread", "aria-label": "Messages" });
    detail.append(thread);

    async function loadThread() {
      const rows = await listAll(`/api/v1/conversations/${conversation.id}/messages`);
      if (!current(view)) return;
      clear(thread);
      if (rows.length === 0) thread.append(el("li", { class: "muted", text: "No messages yet." }));
      for (const row of rows) thread.append(threadLine(row));
    }
    await loadThread();
    every(POLL_MS, loadThread);

    if (!canSend()) {
      detail.append(el("p", { class: "muted", text: "Your role reviews messages; sending needs a sender or admin API token." }));
      return;
    }
    if (!connection) return;
    const text = el("textarea", { id: "send-text", name: "send-text", required: true, maxlength: "4096", "aria-describedby": "send-help" });
    const needsApproval = connection.approval_mode === "required";
    const submit = el("button", { type: "submit", text: needsApproval ? "Send for approval" : "Send" });
    const result = el("div");
    const form = el("form", { class: "panel", novalidate: true, "aria-labelledby": "send-title" },
      el("h3", { id: "send-title", text: "Write a message" }),
      el("label", { for: "send-text", text: "Message" }), text,
      el("p", { id: "send-help", class: "help", text: needsApproval
        ? "A reviewer approves it before it is sent."
        : "This connection sends without review." }),
      submit, result);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clear(result);
      if (!text.value.trim()) {
        result.append(notice("error", el("p", { text: "Write the message first." })));
        text.focus();
        return;
      }
      submit.disabled = true;
      try {
        const message = await api("POST", "/api/v1/messages", {
          connection_id: conversation.connection_id, conversation_id: conversation.id, text: text.value,
        });
        text.value = "";
        result.append(notice("good", el("p", { text: `Message ${messageStatus(message.status)}.` })));
        await loadThread();
      } catch (error) {
        result.append(errorNotice(error, "Not sent."));
      } finally {
        submit.disabled = false;
      }
    });
    detail.append(form);
  }

  route();
})();
