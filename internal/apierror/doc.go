// Package apierror gives every HTTP endpoint of the agent API (the agent's
// own routes and discovery's /v1/services) one error body:
//
//	{"error": "no instance \"x\" on this host", "code": "not_found"}
//
// error is a sentence for people; code is for programs. Code is derived
// from the status ("bad_request", "unauthorized", "forbidden", "not_found",
// "method_not_allowed", "conflict", "request_entity_too_large",
// "too_many_requests", "internal_server_error", "not_implemented",
// "service_unavailable") unless a handler names a finer one with
// WriteCode ("unknown_field", "invalid_signal").
//
// Errors written by code outside our handlers (net/http's ServeMux answers
// 404 and 405 as text/plain, as does http.Error) are rewritten into the same
// shape by Handler. Issue 17: three error formats had been in use.
//
// apierror imports only the standard library.
package apierror
