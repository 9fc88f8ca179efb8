// The live session console on the Host page (docs/adr/0022).
//
// xterm.js only draws: the command line is a plain form, each line goes to the page's own route
// (session cookie + CSRF header), which answers with the job the line became; its output is then
// followed with a long poll and written into the terminal as text. Everything the endpoint sent
// is stripped of terminal escape sequences first, so it cannot retitle, clear, move the cursor or
// plant links. No markup is ever built from it: errors go in through textContent.
(function () {
  "use strict";

  var root = document.getElementById("console");
  if (!root || typeof Terminal === "undefined") {
    return;
  }
  var form = document.getElementById("console-form");
  var input = document.getElementById("console-input");
  var runButton = document.getElementById("console-run");
  var cwdLabel = document.getElementById("console-cwd");
  var errorLine = document.getElementById("console-error");
  var csrf = root.dataset.csrf;
  // The working directory is the client's (as in `tether shell`); it survives a reload of the
  // page for as long as this session lasts.
  var cwdKey = "tether-cwd-" + root.dataset.session;
  var cwd = window.sessionStorage.getItem(cwdKey) || root.dataset.cwd;

  var terminal = new Terminal({
    convertEol: true, // the endpoint's "\n" starts a new line at column 0
    disableStdin: true, // typing happens in the form below, never in the terminal
    cursorBlink: false,
    rows: 24,
    scrollback: 5000,
    fontFamily: "monospace",
    fontSize: 13,
    // The rows are mirrored into the page as text: screen readers (and the tests) read them.
    screenReaderMode: true,
  });
  // The canvas renderer must be in place before open(): xterm's built-in DOM renderer writes
  // <style> elements, which the strict CSP refuses (docs/adr/0022).
  terminal.loadAddon(new CanvasAddon.CanvasAddon());
  terminal.open(document.getElementById("terminal"));
  terminal.writeln("Live session: type a command below ('help' lists them).");

  // ESC-introduced sequences (CSI, OSC, DCS/SOS/PM/APC strings, two-byte escapes) and the
  // one-byte C1 CSI; then every other control except tab and newline, and the Unicode
  // bidirectional overrides (a name that reads differently from what it is), becomes "?".
  var SEQUENCES = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][\s\S]*?(?:\x1b\\|$)|\x1b[ -\/]*[0-~]?|\x9b[0-?]*[ -\/]*[@-~]?/g;
  var CONTROLS = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;

  function plain(text) {
    return String(text).replace(SEQUENCES, "").replace(/\r/g, "").replace(CONTROLS, "?");
  }

  function showCwd() {
    cwdLabel.textContent = cwd;
  }

  function showError(sentence) {
    errorLine.textContent = sentence;
    errorLine.hidden = !sentence;
    if (sentence) {
      terminal.writeln("! " + plain(sentence));
    }
  }

  function busy(state) {
    input.disabled = state;
    runButton.disabled = state;
    if (!state) {
      input.focus();
    }
  }

  function post(url, fields) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
      body: new URLSearchParams(fields),
    });
  }

  function answer(response) {
    if (response.redirected || response.status === 401) {
      throw new Error("Your login has ended; reload the page and log in again.");
    }
    var type = response.headers.get("content-type") || "";
    if (type.indexOf("application/json") !== 0) {
      throw new Error("The platform refused the request (" + response.status + "); reload the page and try again.");
    }
    return response.json().then(function (body) {
      if (!response.ok) {
        throw new Error(body.error || "The platform refused the request (" + response.status + ").");
      }
      return body;
    });
  }

  // Follow one job: write its output as it arrives, then its result or its error.
  function follow(command, cursor) {
    var url = root.dataset.output + encodeURIComponent(command.job_id) + "/output?after=" + cursor;
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(answer)
      .then(function (body) {
        if (command.show) {
          body.output.forEach(function (piece) {
            terminal.write(plain(piece.text));
          });
        }
        if (!body.done) {
          return follow(command, body.cursor);
        }
        if (body.error) {
          showError(body.error);
          return;
        }
        if (command.cd_to) {
          cwd = command.cd_to;
          window.sessionStorage.setItem(cwdKey, cwd);
          showCwd();
        }
        if (command.show && command.show_result && body.result) {
          terminal.writeln(plain(body.result));
        }
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var line = input.value;
    if (!line.trim()) {
      return;
    }
    input.value = "";
    showError("");
    terminal.writeln("$ " + plain(cwd) + " > " + plain(line));
    busy(true);
    post(root.dataset.commands, { line: line, cwd: cwd })
      .then(answer)
      .then(function (command) {
        if (command.text !== undefined) {
          terminal.writeln(plain(command.text));
          return;
        }
        return follow(command, 0);
      })
      .catch(function (error) {
        showError(error.message);
      })
      .then(function () {
        busy(false);
      });
  });

  showCwd();
  input.focus();
})();
