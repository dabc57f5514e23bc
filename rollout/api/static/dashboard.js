// Ringmaster's dashboard: refreshes the server-rendered fragments, and pulls and releases the andon cord
// through the JSON API with the bearer token the user typed. The token lives in sessionStorage only:
// never in a cookie (so no request carries it unasked) and never in a URL (so no log or history holds it).
"use strict";

(() => {
  const TOKEN_KEY = "ringmaster.token";
  const body = document.body;
  const refreshMs = Number(body.dataset.refreshMs) || 2000;
  const viaHeader = body.dataset.viaHeader || "Ringmaster-Via";
  const sections = Array.from(document.querySelectorAll("[data-fragment]"));
  const refreshState = document.getElementById("refresh-state");
  const tokenNeeded = document.getElementById("token-needed");
  const forgetToken = document.getElementById("forget-token");
  let timer = null;

  const storedToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function rememberToken(token) {
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
    }
    forgetToken.hidden = !token;
  }

  function authorization(token) {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  // The API answers errors as problem+json; its detail says what was wrong and what to do.
  async function problemDetail(response) {
    try {
      const problem = await response.json();
      const fields = (problem.errors || []).map((error) => error.field + ": " + error.message);
      const detail = problem.detail || problem.title || response.statusText;
      return fields.length > 1 ? detail + " (" + fields.join("; ") + ")" : detail;
    } catch (error) {
      return response.status + " " + response.statusText;
    }
  }

  function showProblem(element, text) {
    element.textContent = text;
    element.hidden = !text;
  }

  function updateLineState() {
    const marker = document.querySelector("#cord [data-line-state]");
    body.dataset.line = marker ? marker.dataset.lineState : "unknown";
  }

  async function fetchSection(section, token) {
    const response = await fetch(section.dataset.fragment, {
      headers: { Accept: "text/html", ...authorization(token) },
      cache: "no-store",
      credentials: "omit",
    });
    if (response.status === 401 || response.status === 403) {
      return { section, needsToken: true, detail: await problemDetail(response) };
    }
    if (!response.ok) {
      return { section, detail: await problemDetail(response) };
    }
    return { section, html: await response.text() };
  }

  // A refresh asked for while another is under way (after a pull, say) supersedes it: only the
  // newest one writes the page and schedules the next.
  let generation = 0;

  async function refresh() {
    const mine = ++generation;
    clearTimeout(timer);
    const token = storedToken();
    let outcomes;
    try {
      outcomes = await Promise.all(sections.map((section) => fetchSection(section, token)));
    } catch (error) {
      outcomes = null;
    }
    if (mine !== generation) {
      return;
    }
    if (outcomes === null) {
      refreshState.textContent = "cannot reach the service; retrying";
      refreshState.classList.add("stale");
    } else {
      for (const outcome of outcomes) {
        if (outcome.html !== undefined) {
          // Fragments are rendered by this server with every value escaped.
          outcome.section.innerHTML = outcome.html;
        }
      }
      const refused = outcomes.find((outcome) => outcome.needsToken);
      const failed = outcomes.find((outcome) => outcome.detail && !outcome.needsToken);
      tokenNeeded.hidden = !refused;
      showProblem(document.getElementById("read-token-problem"), refused && token ? refused.detail : "");
      updateLineState();
      const now = new Date().toISOString().slice(11, 19);
      refreshState.textContent = failed ? "refresh failed: " + failed.detail : "updated " + now + " UTC";
      refreshState.classList.toggle("stale", Boolean(failed || refused));
    }
    timer = setTimeout(refresh, refreshMs);
  }

  async function callApi(path, payload, token) {
    return fetch(path, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        [viaHeader]: "dashboard",
        ...authorization(token),
      },
      body: JSON.stringify(payload),
      cache: "no-store",
      credentials: "omit",
    });
  }

  function openDialog(dialog, tokenInput, focusInput) {
    dialog.querySelector("[role=alert]").hidden = true;
    tokenInput.value = storedToken();
    dialog.showModal();
    focusInput.focus();
  }

  // Checks the browser can make before asking the API, which checks again and has the last word.
  function reasonProblem(textarea) {
    const reason = textarea.value.trim();
    if (reason.length < textarea.minLength || reason.length > textarea.maxLength) {
      return "reason: say why in " + textarea.minLength + " to " + textarea.maxLength + " characters";
    }
    return "";
  }

  async function submitDialog(event, dialog, button, request) {
    event.preventDefault();
    const alert = dialog.querySelector("[role=alert]");
    const tokenInput = dialog.querySelector("input[name=token]");
    const token = tokenInput.value.trim();
    const invalid = request.check() || (token ? "" : "token: paste an API token (`ringmaster token create`)");
    if (invalid) {
      showProblem(alert, invalid);
      return;
    }
    button.disabled = true;
    try {
      const response = await callApi(request.path, request.payload(), token);
      if (response.ok) {
        rememberToken(token);
        dialog.close();
        dialog.querySelector("form").reset();
        await refresh();
      } else {
        showProblem(alert, await problemDetail(response));
      }
    } catch (error) {
      showProblem(alert, "cannot reach the service: " + error.message);
    } finally {
      button.disabled = false;
    }
  }

  const pullDialog = document.getElementById("pull-dialog");
  const pullForm = document.getElementById("pull-form");
  const pullReason = document.getElementById("pull-reason");
  const pullNamespace = document.getElementById("pull-namespace");
  const pullRollout = document.getElementById("pull-rollout");

  function chosenScope() {
    return pullForm.querySelector("input[name=scope]:checked").value;
  }

  pullForm.addEventListener("change", () => {
    const scope = chosenScope();
    pullNamespace.disabled = scope === "global";
    pullRollout.disabled = scope !== "rollout";
  });

  document.getElementById("pull-button").addEventListener("click", () => {
    openDialog(pullDialog, document.getElementById("pull-token"), pullReason);
  });

  pullForm.addEventListener("submit", (event) => submitDialog(event, pullDialog,
    document.getElementById("pull-confirm"), {
      path: "/api/v1/andon/pull",
      check() {
        const scope = chosenScope();
        if (scope !== "global" && !pullNamespace.value.trim()) {
          return "scope: name the namespace";
        }
        if (scope === "rollout" && !pullRollout.value.trim()) {
          return "scope: name the rollout";
        }
        return reasonProblem(pullReason);
      },
      payload() {
        const scope = chosenScope();
        const named = {};
        if (scope !== "global") {
          named.namespace = pullNamespace.value.trim();
        }
        if (scope === "rollout") {
          named.rollout = pullRollout.value.trim();
        }
        return { reason: pullReason.value.trim(), scope: named };
      },
    }));

  const releaseDialog = document.getElementById("release-dialog");
  const releaseReason = document.getElementById("release-reason");
  let releasing = null;

  document.getElementById("cord").addEventListener("click", (event) => {
    const button = event.target.closest("[data-release]");
    if (!button) {
      return;
    }
    releasing = Number(button.dataset.release);
    document.getElementById("release-pull-id").textContent = String(releasing);
    document.getElementById("release-summary").textContent = button.dataset.summary;
    openDialog(releaseDialog, document.getElementById("release-token"), releaseReason);
  });

  document.getElementById("release-form").addEventListener("submit", (event) => submitDialog(event, releaseDialog,
    document.getElementById("release-confirm"), {
      path: "/api/v1/andon/release",
      check: () => reasonProblem(releaseReason),
      payload: () => ({ id: releasing, reason: releaseReason.value.trim() }),
    }));

  for (const closer of document.querySelectorAll("dialog [data-close]")) {
    closer.addEventListener("click", () => closer.closest("dialog").close());
  }

  document.getElementById("read-token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    rememberToken(document.getElementById("read-token").value.trim());
    refresh();
  });

  forgetToken.addEventListener("click", () => {
    rememberToken("");
    refresh();
  });

  forgetToken.hidden = !storedToken();
  refresh();
})();
