// The txgateway dashboard: the admin API, read with the admin token kept in this closure
// (never stored, never in a URL). Every value from the gateway is written as text, never
// as HTML.
"use strict";
(() => {
  let token = null;
  let chart = null;
  let stream = null;
  let timers = [];
  const $ = (selector) => document.querySelector(selector);
  const PALETTE = ["#2f6fdf", "#e0663b", "#1f8a4c", "#9b51e0", "#c0362c", "#0f9fb3",
                   "#b5891b", "#5a6472"];

  async function api(method, path, body) {
    const headers = { authorization: "Bearer " + token };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new Error((data && data.error && data.error.message) || response.statusText);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "" : String(value);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function fill(tbody, items, makeRow) {
    const body = $(tbody);
    body.replaceChildren(...items.map((item) => {
      const row = document.createElement("tr");
      makeRow(row, item);
      return row;
    }));
  }

  const number = (value) => (value || 0).toLocaleString("en");
  const dollars = (value) => (value || 0).toFixed(value && value < 0.01 ? 6 : 2);

  // Login and tabs.

  $("#login").addEventListener("submit", async (event) => {
    event.preventDefault();
    token = $("#token").value;
    $("#token").value = "";
    try {
      await api("GET", "/admin/providers");
    } catch (error) {
      token = null;
      $("#login-error").textContent = error.status === 401
        ? "That is not the admin token." : "The gateway said: " + error.message;
      return;
    }
    $("#login-error").textContent = "";
    $("#login").hidden = true;
    for (const shown of ["#tabs", "#logout", "#live"]) $(shown).hidden = false;
    show("usage");
    follow();
    timers = [setInterval(refreshVisible, 10000)];
  });

  $("#logout").addEventListener("click", () => {
    token = null;
    if (stream) stream.abort();
    timers.forEach(clearInterval);
    for (const hidden of ["#tabs", "#logout", "#live", "#usage", "#sessions", "#keys",
                          "#providers", "#new-secret"]) $(hidden).hidden = true;
    $("#login").hidden = false;
  });

  let current = "usage";
  function show(tab) {
    current = tab;
    for (const button of document.querySelectorAll("#tabs button")) {
      button.classList.toggle("active", button.dataset.tab === tab);
    }
    for (const section of ["usage", "sessions", "keys", "providers"]) {
      $("#" + section).hidden = section !== tab;
    }
    refreshVisible();
  }
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }

  function refreshVisible() {
    if (!token) return;
    const loaders = { usage: loadUsage, keys: loadKeys, providers: loadProviders };
    if (loaders[current]) loaders[current]().catch(reportError);
  }

  function reportError(error) {
    if (error.status === 401) $("#logout").click();
    else console.error(error);
  }

  // Usage over time, from /admin/usage.

  for (const control of ["#group-by", "#bucket", "#range", "#measure"]) {
    $(control).addEventListener("change", () => loadUsage().catch(reportError));
  }
  $("#refresh").addEventListener("click", () => loadUsage().catch(reportError));

  function measure(row, name) {
    return name === "tokens" ? (row.input_tokens || 0) + (row.output_tokens || 0)
      : (row[name] || 0);
  }

  async function loadUsage() {
    const groupBy = $("#group-by").value;
    const from = Math.floor(Date.now() / 1000) - Number($("#range").value);
    const query = `group_by=${groupBy}&from=${from}`;
    const [buckets, totals] = await Promise.all([
      api("GET", `/admin/usage?${query}&bucket=${$("#bucket").value}`),
      api("GET", `/admin/usage?${query}`)]);
    drawChart(buckets.data, groupBy, $("#measure").value, from);
    fill("#usage-table tbody", totals.data, (row, item) => {
      cell(row, item[groupBy] === null ? "(none)" : item[groupBy], "group");
      cell(row, number(item.requests));
      cell(row, number(item.errors), item.errors ? "error" : "");
      for (const name of ["input_tokens", "cached_input_tokens", "output_tokens",
                          "reasoning_tokens", "input_audio_tokens", "output_audio_tokens"]) {
        cell(row, number(item[name]));
      }
      cell(row, dollars(item.cost_usd));
    });
  }

  function drawChart(rows, groupBy, name, from) {
    const box = $("#chart");
    if (chart) { chart.destroy(); chart = null; }
    box.replaceChildren();
    if (!rows.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "No usage in this range yet.";
      box.appendChild(empty);
      return;
    }
    const times = [...new Set(rows.map((row) => Date.parse(row.bucket) / 1000))]
      .sort((a, b) => a - b);
    const groups = [...new Set(rows.map((row) => row[groupBy] === null ? "(none)"
                                                               : String(row[groupBy])))];
    const series = groups.map(() => times.map(() => 0));
    for (const row of rows) {
      const group = groups.indexOf(row[groupBy] === null ? "(none)" : String(row[groupBy]));
      series[group][times.indexOf(Date.parse(row.bucket) / 1000)] = measure(row, name);
    }
    chart = new uPlot({
      width: Math.max(box.clientWidth - 16, 300), height: 280,
      series: [{}, ...groups.map((group, index) => ({
        label: group, stroke: PALETTE[index % PALETTE.length], width: 2,
        points: { show: true, size: 6 } }))],
      axes: [{}, { label: $("#measure").selectedOptions[0].textContent, size: 70 }],
      scales: { x: { time: true, range: () => [from, Date.now() / 1000] } },
    }, [times, ...series], box);
    box.dataset.series = String(groups.length);
  }

  // Live realtime sessions: server-sent events read through fetch (it can send the token).

  async function follow() {
    while (token) {
      stream = new AbortController();
      try {
        const response = await fetch("/admin/realtime/stream", {
          headers: { authorization: "Bearer " + token }, signal: stream.signal });
        if (!response.ok) throw Object.assign(new Error(response.statusText),
                                              { status: response.status });
        $("#live").textContent = "live";
        $("#live").classList.add("on");
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = block.split("\n").filter((line) => line.startsWith("data: "))
              .map((line) => line.slice(6)).join("\n");
            if (data) showSessions(JSON.parse(data));
          }
        }
      } catch (error) {
        if (!token) return;
        if (error.status === 401) { reportError(error); return; }
      }
      $("#live").textContent = "reconnecting";
      $("#live").classList.remove("on");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  function sessionRow(last) {
    return (row, session) => {
      const usage = session.usage || {};
      const ended = session.ended_at ? Date.parse(session.ended_at) : Date.now();
      row.dataset.session = session.id;
      cell(row, session.id);
      cell(row, session.key);
      cell(row, session.model);
      cell(row, session.provider);
      cell(row, ((ended - Date.parse(session.started_at)) / 1000).toFixed(0) + " s",
           "duration");
      cell(row, number(usage.input_text_tokens), "text-in");
      cell(row, number(usage.input_audio_tokens), "audio-in");
      cell(row, number(usage.input_cached_tokens), "cached-in");
      cell(row, number(usage.output_text_tokens), "text-out");
      cell(row, number(usage.output_audio_tokens), "audio-out");
      cell(row, number(usage.transcription_tokens), "transcription");
      cell(row, last(session));
    };
  }

  function showSessions(snapshot) {
    fill("#active-sessions tbody", snapshot.active, sessionRow((s) => number(s.responses)));
    fill("#recent-sessions tbody", snapshot.recent, sessionRow((s) => s.ended_by));
  }

  // Keys: list, create (the secret shown once), change limits, revoke.

  async function loadKeys() {
    const keys = await api("GET", "/admin/keys");
    fill("#keys-table tbody", keys.data, (row, key) => {
      row.dataset.key = key.id;
      cell(row, key.id);
      cell(row, key.name);
      cell(row, key.allowed_models.length ? key.allowed_models.join(", ") : "all");
      cell(row, key.requests_per_minute || "—");
      cell(row, key.tokens_per_minute || "—");
      cell(row, key.budget_usd ? `${key.budget_usd} / ${key.budget_period}` : "—");
      cell(row, key.source);
      cell(row, key.revoked_at ? "revoked" : "active", key.revoked_at ? "error" : "ok");
      const actions = cell(row, "");
      if (key.source === "store" && !key.revoked_at) {
        actions.append(button("Limits", () => editLimits(key)),
                       button("Revoke", () => revoke(key)));
      }
    });
  }

  function button(label, action) {
    const element = document.createElement("button");
    element.textContent = label;
    element.className = label.toLowerCase();
    element.addEventListener("click", () => action().catch(keyError));
    return element;
  }

  function keyError(error) {
    $("#keys-error").textContent = error.message;
  }

  function limits(form) {
    const fields = {};
    for (const name of ["requests_per_minute", "tokens_per_minute"]) {
      if (form[name].value !== "") fields[name] = parseInt(form[name].value, 10);
    }
    if (form.budget_usd.value !== "") fields.budget_usd = parseFloat(form.budget_usd.value);
    fields.budget_period = form.budget_period.value;
    return fields;
  }

  $("#new-key").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const fields = { name: form.name.value, ...limits(form) };
    const models = form.models.value.split(",").map((model) => model.trim()).filter(Boolean);
    if (models.length) fields.models = models;
    try {
      const created = await api("POST", "/admin/keys", fields);
      $("#new-secret").textContent =
        `${created.id}: ${created.key} (copy it now: it is not shown again)`;
      $("#new-secret").hidden = false;
      $("#keys-error").textContent = "";
      form.reset();
      await loadKeys();
    } catch (error) {
      keyError(error);
    }
  });

  async function editLimits(key) {
    const asked = (label, value) => {
      const answer = window.prompt(label, value === null || value === undefined ? "" : value);
      return answer === null ? undefined : answer;
    };
    const changes = {};
    for (const [name, label] of [["requests_per_minute", "Requests per minute"],
                                 ["tokens_per_minute", "Tokens per minute"]]) {
      const value = asked(label, key[name]);
      if (value !== undefined && value !== "") changes[name] = parseInt(value, 10);
    }
    const budget = asked("Budget (USD)", key.budget_usd);
    if (budget !== undefined && budget !== "") changes.budget_usd = parseFloat(budget);
    await api("PATCH", `/admin/keys/${encodeURIComponent(key.id)}`, changes);
    await loadKeys();
  }

  async function revoke(key) {
    if (!window.confirm(`Revoke ${key.name || key.id}? Callers using it are refused at once.`)) {
      return;
    }
    await api("DELETE", `/admin/keys/${encodeURIComponent(key.id)}`);
    await loadKeys();
  }

  // Providers and the routes' targets, with their cooldown state.

  async function loadProviders() {
    const view = await api("GET", "/admin/providers");
    const cooling = {};
    for (const model of view.models) {
      for (const target of model.targets) {
        if (target.cooling_down) cooling[target.provider] = (cooling[target.provider] || 0) + 1;
      }
    }
    fill("#providers-table tbody", view.providers, (row, provider) => {
      cell(row, provider.name);
      cell(row, provider.kind);
      cell(row, cooling[provider.name] || 0, cooling[provider.name] ? "cooling" : "ok");
    });
    const targets = view.models.flatMap((model) => model.targets.map(
      (target) => ({ route: model.name, ...target })));
    fill("#models-table tbody", targets, (row, target) => {
      cell(row, target.route);
      cell(row, target.provider);
      cell(row, target.model || "(as asked)");
      cell(row, target.weight);
      cell(row, target.priority);
      cell(row, target.cooling_down ? "cooling down" : "ready",
           target.cooling_down ? "cooling" : "ok");
    });
  }
})();
