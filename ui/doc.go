// Package ui is the fleet dashboard every agent serves under /ui/ on its
// HTTP address (issue 19): an overview of hosts and apps, an app, a host,
// an instance with its logs followed live, and the registry's event
// stream, with the operator's actions (scale, restart, stop, signal,
// drain, undrain; promote, pause, resume and fail a deployment).
//
// # Why this front-end stack
//
// The pages are rendered on the server with html/template, and one small
// hand-written script (assets/ui.js, no framework) adds the live parts: it
// listens to server-sent events and, when the registry changes, fetches
// the current page's <main> again and swaps it in; for a log it appends
// lines as text nodes. Both the templates and the assets are embedded with
// embed, so the binary serves everything itself: no CDN, no npm, nothing
// fetched at run time, it works offline, and `go build` alone builds it.
// html/template escapes by context, so a name or a log line holding
// <script> renders as text; the script only ever sets textContent or
// replaces <main> with HTML the server rendered (and escaped). A framework
// or a built bundle would buy little for a handful of tables and would add
// a second tool chain to review and pin. Without JavaScript every page
// still works (actions, navigation); only the live updates need it.
//
// # Live updates
//
// GET /ui/live is a server-sent event stream fed by the registry's watch
// (registry.WatchEvents) for as long as the page is open: one etcd watch
// per open page, on the client's one gRPC stream; nothing lists the whole
// registry on a timer. A page re-reads its view only when an event came,
// at most once per refresh interval of the script.
//
// # Pictures and history
//
// The charts (running instances per app over the last hour on the
// overview and the app page; load average and memory use per host on the
// host page) and an instance's state history come from a History the
// serving agent keeps in memory and runs beside its API: a ring buffer per
// series, sampled every 10 s and 360 deep (an hour), and the last 32
// states per instance. It is fed by what the registry already streams: one
// watch of its events (instance changes carry their state, reason and
// time; instances are listed once at start and after a compaction) and
// one of its hosts (the load each agent publishes with its host record).
// Nothing polls the registry. A series with nothing over its whole window
// (an app without instances, a host gone) is dropped, and an instance's
// history goes with its record, so the memory stays bounded by what the
// fleet holds. The history starts with the agent: after a restart the
// charts start empty and an instance's first listed state is the one it
// had then. Charts are inline SVG rendered by html/template (no chart
// library, no script): each has a title and a description giving the
// latest, lowest and highest value, and its numbers follow as a table.
//
// # Deployments
//
// The app page shows the app's active deployment (registry.Deployment):
// its state and reason, and per process type its progress (instances
// settled toward the target, new ones placed, healthy and unhealthy, old
// ones left, canaries and whether they are promoted), updated live like
// the rest of the page; then the ended deployments, newest first. Promote,
// pause, resume and fail are POST actions like the others (confirmed,
// operator scope); each form names the deployment the page showed, and
// if another one (or none) is active by then nothing is done and the page
// says so.
//
// # Logs of an instance on another host
//
// Logs are read from the agent that runs the instance. The instance page
// of an instance on another host does not proxy them (the serving agent
// would need a token for the other one, and a browser would see one
// agent's credentials used for another's data): it links clearly to the
// same page on the owning agent's dashboard, where the operator signs in
// with that agent's token if one is needed. The log switch (stdout,
// stderr) is a pair of links: each page follows one stream.
//
// # Actions
//
// Every action is a POST (nothing changes on a GET) and asks for
// confirmation: the first POST answers with a confirmation page whose
// form posts again with confirm=yes. The agent mounts the handler behind
// its own authentication (see the agent's auth.go): GET needs the read
// scope, logs the logs scope, a POST the operator scope. A browser cannot
// send a bearer header on a navigation, so the token may come from the
// cookie that /ui/login sets (HttpOnly, SameSite=Strict); a POST whose
// Origin or Sec-Fetch-Site shows another site is refused (CSRF).
//
// # Imports
//
// ui reads and writes the registry; it never imports the agent or the
// supervisor. What only the serving agent knows (the logs and resource use
// of its own instances) comes through the small Local interface that the
// agent implements.
package ui
