/// The explorer's only script and style sheet, served from `/assets/` by the explorer itself:
/// pages fetch nothing from anywhere else (the Content-Security-Policy says so too).
enum Assets {
    /// Refreshes a page's live part every `data-refresh` seconds (fetching the page again with
    /// `?partial=1` and swapping `#live`), and appends new bytes of a job's log to `#log`.
    static let script = #"""
    // GPUMesh explorer: keeps the live part of a page and a job's log up to date.
    (function () {
      "use strict";
      var seconds = Number(document.body.dataset.refresh || 0);
      var last = null, refreshes = 0;
      function stamp() {
        var u = document.getElementById("updated");
        if (u) u.textContent = new Date().toISOString().replace("T", " ").slice(0, 19) + "Z";
      }
      async function refreshLive() {
        var live = document.getElementById("live");
        if (!live) return;
        var url = new URL(window.location.href);
        url.searchParams.set("partial", "1");
        try {
          var res = await fetch(url, { cache: "no-store" });
          if (!res.ok) return;
          var html = await res.text();
          if (html !== last) { live.innerHTML = html; last = html; }
          live.dataset.refreshes = String(++refreshes);
          stamp();
        } catch (e) { /* the node may be restarting; try again next time */ }
      }
      async function followLog() {
        var log = document.getElementById("log");
        if (!log || log.dataset.done === "1") return;
        var url = "/api/jobs/" + encodeURIComponent(log.dataset.job) + "/log?offset=" + encodeURIComponent(log.dataset.next);
        try {
          var res = await fetch(url, { cache: "no-store" });
          if (!res.ok) return;
          var body = await res.json();
          if (body.log) log.appendChild(document.createTextNode(body.log));
          log.dataset.next = String(body.log_next);
          var state = body.job && body.job.state;
          if ((state === "completed" || state === "failed" || state === "cancelled") && !body.log) log.dataset.done = "1";
        } catch (e) { }
      }
      if (seconds > 0) setInterval(function () { refreshLive(); followLog(); }, seconds * 1000);
    })();
    """#

    /// The style sheet.
    static let style = #"""
    :root { --fg: #1b1f24; --muted: #5b6470; --line: #d8dde3; --bar: #2f6fde; --bg: #fbfcfd; --card: #fff; }
    * { box-sizing: border-box; }
    body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
    header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 12px; padding: 10px 20px; background: #14213d; color: #fff; }
    header a { color: #cfe0ff; text-decoration: none; }
    header .brand { font-weight: 700; }
    header .self { color: #aab6cc; font-size: 13px; }
    header nav { margin-left: auto; display: flex; gap: 14px; }
    header nav a.current { color: #fff; border-bottom: 2px solid #fff; }
    main { padding: 8px 20px 30px; max-width: 1200px; }
    h1 { font-size: 22px; margin: 12px 0; }
    h2 { font-size: 17px; margin: 22px 0 8px; }
    a { color: #1a56c4; }
    code, pre { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
    pre { background: #f1f3f5; padding: 10px; overflow: auto; max-height: 420px; white-space: pre-wrap; }
    dl.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 10px; margin: 0; }
    dl.stats div { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
    dl.stats dt { color: var(--muted); font-size: 12px; }
    dl.stats dd { margin: 2px 0 0; font-size: 18px; font-weight: 600; overflow-wrap: anywhere; }
    table { border-collapse: collapse; width: 100%; margin: 10px 0; background: var(--card); }
    th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); font-size: 14px; }
    th { color: var(--muted); font-weight: 600; }
    .empty, .updated { color: var(--muted); }
    .updated { font-size: 12px; margin-top: 24px; }
    .error { color: #a4161a; font-weight: 600; }
    svg.chart { max-width: 100%; height: auto; background: var(--card); border: 1px solid var(--line); border-radius: 6px; }
    svg.chart .bar { fill: var(--bar); }
    svg.chart .grid { stroke: var(--line); }
    svg.chart text { font-size: 11px; fill: var(--muted); }
    svg.chart .chart-title { font-size: 12px; fill: var(--fg); font-weight: 600; }
    svg.chart .value { fill: var(--fg); }
    form.filter { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; margin: 8px 0; }
    form.filter label { font-size: 12px; color: var(--muted); display: flex; flex-direction: column; }
    .state.completed { color: #1b7f3b; } .state.failed, .state.cancelled { color: #a4161a; }
    nav.epochs, nav.pages { margin: 10px 0; }
    nav.epochs a.current { font-weight: 700; }
    pre#log:empty::before { content: "no output yet"; color: var(--muted); }
    """#
}
