// compassd dashboard: keeps the server-rendered tables live and sends admin actions.
// No build step, no library: the page works without this file, only less live.
"use strict";

(function () {
  const TOKEN = "compassToken";
  let received = performance.now();

  function token() {
    try { return localStorage.getItem(TOKEN) || "-"; } catch (e) { return "-"; }
  }

  function say(text, bad) {
    const notice = document.getElementById("notice");
    if (!notice) return;
    notice.textContent = text;
    notice.className = bad ? "notice bad" : "notice";
    notice.hidden = false;
  }

  function duration(seconds) {
    const whole = Math.floor(Math.max(0, seconds));
    if (whole < 60) return whole + " s";
    if (whole < 3600) return Math.floor(whole / 60) + " min " + whole % 60 + " s";
    return Math.floor(whole / 3600) + " h " + Math.floor(whole % 3600 / 60) + " min";
  }

  function tick() {
    const gone = (performance.now() - received) / 1000;
    document.querySelectorAll("[data-left]").forEach(function (cell) {
      cell.textContent = duration(parseFloat(cell.dataset.left) - gone);
    });
    document.querySelectorAll("[data-waited]").forEach(function (cell) {
      cell.textContent = duration(parseFloat(cell.dataset.waited) + gone);
    });
  }

  function live() {
    const status = document.getElementById("live");
    if (!status || !window.EventSource) return;
    const events = new EventSource("/events");
    events.addEventListener("state", function (event) {
      const data = JSON.parse(event.data);
      Object.keys(data.fragments).forEach(function (id) {
        const body = document.getElementById(id);
        if (body) body.innerHTML = data.fragments[id];
      });
      received = performance.now();
      status.textContent = "Live: updated " + new Date().toLocaleTimeString();
      status.className = "live on";
    });
    events.onerror = function () {
      status.textContent = "Connection to the tracker lost; retrying...";
      status.className = "live off";
    };
    setInterval(tick, 1000);
  }

  function refreshHistory() {
    const section = document.getElementById("history");
    if (!section) return;
    setInterval(function () {
      fetch("/history", {credentials: "same-origin"}).then(function (answer) {
        if (answer.ok) return answer.text();
        throw new Error(answer.statusText);
      }).then(function (html) {
        section.innerHTML = "<h2>History</h2>" + html;
      }).catch(function () {});
    }, 60000);
  }

  function question(button) {
    const data = button.dataset;
    if (data.action === "drain") {
      return "Drain " + data.device + "? It takes no new leases; a lease it holds runs to its end.";
    }
    if (data.action === "undrain") return "Put " + data.device + " back in service?";
    return "Kick " + data.holder + " off " + data.device + "? Lease " + data.lease + " ends now.";
  }

  function act(button) {
    if (!window.confirm(question(button))) return;
    const data = button.dataset;
    const body = data.action === "kick" ? {lease: data.lease} : {device: data.device};
    button.disabled = true;
    fetch("/api/" + data.action, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Authorization": "Bearer " + token(), "Content-Type": "application/json"},
      body: JSON.stringify(body),
    }).then(function (answer) {
      return answer.json().then(function (reply) {
        if (answer.ok) say(reply.message, false);
        else say(reply.error || ("The tracker answered " + answer.status), true);
      });
    }).catch(function (e) {
      say("The tracker could not be reached: " + e, true);
    }).finally(function () { button.disabled = false; });
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (button) act(button);
  });

  document.addEventListener("DOMContentLoaded", function () {
    const login = document.getElementById("login");
    if (login) {
      login.addEventListener("submit", function () {
        try { localStorage.setItem(TOKEN, document.getElementById("token").value.trim()); }
        catch (e) { /* private mode: admin actions will ask again */ }
      });
      return;
    }
    const out = document.querySelector("form[action='/logout']");
    if (out) out.addEventListener("submit", function () {
      try { localStorage.removeItem(TOKEN); } catch (e) { /* nothing stored */ }
    });
    live();
    refreshHistory();
  });
})();
