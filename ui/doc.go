// Package ui is the fleet dashboard every agent serves under /ui/ on its
// HTTP address (issue 19): an overview of hosts and apps, an app, a host,
// an instance with its logs followed live, and the registry's event
// stream, with the operator's actions (scale, restart, stop, signal,
// drain, undrain).
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
