"""The cluster console: a static page under `/ui/` fed by read-only JSON, for the operator's browser.

Strictly read-only over TCP (admin actions stay on the unix socket) and answered only to
`client_cidrs`; the page loads nothing from outside (clusters are often offline).
"""
