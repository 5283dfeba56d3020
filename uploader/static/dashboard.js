// buildq dashboard: keeps the server-rendered page live. No framework, no build step.
// Everything inserted as HTML comes from the server's own escaped fragments
// (/ui/panels, /ui/deployments/ID/summary); log lines and messages go in as text.
(function () {
  "use strict";

  var body = document.body;
  var live = document.getElementById("live");

  function setLive(text, ok) {
    live.textContent = text;
    live.className = ok ? "live on" : "live off";
  }

  // Fetch a fragment into element; a refresh asked for while one runs runs once after it.
  function refresher(url, element) {
    var running = false;
    var again = false;
    function refresh() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("HTTP " + response.status);
          }
          return response.text();
        })
        .then(function (html) {
          element.innerHTML = html;
        })
        .catch(function (err) {
          setLive("refresh failed: " + err.message, false);
        })
        .finally(function () {
          running = false;
          if (again) {
            again = false;
            refresh();
          }
        });
    }
    return refresh;
  }

  function dashboard() {
    var refresh = refresher("/ui/panels", document.getElementById("panels"));
    var after = body.dataset.eventsAfter || "";
    var url = "/events" + (after ? "?after=" + encodeURIComponent(after) : "");
    var source = new EventSource(url);
    source.onopen = function () {
      setLive("live", true);
    };
    source.onerror = function () {
      setLive("reconnecting", false);
    };
    ["job", "lock", "claim", "site", "reset"].forEach(function (kind) {
      source.addEventListener(kind, refresh);
    });
    setInterval(refresh, 5000); // heartbeat ages move without events
  }

  // Terminal escape sequences build tools print (colours above all; CI=true turns
  // many on): CSI, OSC ended by BEL or ST, and the two-character ones, as the CLI
  // drops them (shared/cli/progress.py).
  var ANSI_ESCAPE = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]/g;

  function deployment() {
    var job = encodeURIComponent(body.dataset.job);
    var log = document.getElementById("log");
    var message = document.getElementById("message");
    var refresh = refresher("/ui/deployments/" + job + "/summary", document.getElementById("summary"));

    function append(text, kind) {
      var follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      var line = document.createElement("div");
      line.className = "entry " + kind;
      line.textContent = text;
      log.appendChild(line);
      if (follow) {
        log.scrollTop = log.scrollHeight;
      }
    }

    var source = new EventSource("/deployments/" + job + "/logs");
    source.onopen = function () {
      setLive("following the build log", true);
    };
    source.onerror = function () {
      setLive("reconnecting", false);
    };
    source.addEventListener("line", function (event) {
      showHeld();
      append(JSON.parse(event.data).text.replace(ANSI_ESCAPE, ""), "line");
    });
    // A waiting job looks at its lock again now and then (queued, building, waiting
    // again while it is held): after "waiting", a round's phases are shown only once
    // the job gets further, as the CLI does (shared/cli/progress.py).
    var held = [];
    var waiting = false;
    function showHeld() {
      held.forEach(function (status) {
        append("==> " + status, "phase");
      });
      held = [];
      waiting = false;
    }
    ["phase", "status"].forEach(function (kind) {
      source.addEventListener(kind, function (event) {
        var status = JSON.parse(event.data).status;
        refresh();
        if (waiting && (status === "queued" || status === "building")) {
          held.push(status);
          return;
        }
        if (waiting && status === "waiting") {
          held = [];
          return;
        }
        showHeld();
        waiting = status === "waiting";
        append("==> " + status, "phase");
      });
    });
    source.addEventListener("end", function (event) {
      showHeld();
      append("==> " + JSON.parse(event.data).status, "end");
      source.close();
      setLive("ended", true);
      refresh();
    });

    function act(action) {
      message.textContent = action + "…";
      fetch("/deployments/" + job + "/" + action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      })
        .then(function (response) {
          return response.json().then(function (data) {
            if (!response.ok) {
              throw new Error((data.error && data.error.message) || "HTTP " + response.status);
            }
            return data;
          });
        })
        .then(function (data) {
          message.textContent = action + ": " + (data.status || "done");
          if (action === "retry") {
            window.location.reload(); // a new attempt: its log starts again
          } else {
            refresh();
          }
        })
        .catch(function (err) {
          message.textContent = action + " refused: " + err.message;
        });
    }

    document.querySelectorAll("button[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        act(button.dataset.action);
      });
    });
  }

  if (body.dataset.view === "dashboard") {
    dashboard();
  } else if (body.dataset.view === "deployment") {
    deployment();
  }
})();
