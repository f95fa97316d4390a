"""The org admin's web console: served by `org-server serve --console HOST:PORT` beside the gRPC
API, on the same store and through the same domain calls (OrgService, Groups, quota_admin), so a
change made here is checked, recorded and pushed exactly as the CLI's and the admin RPCs' are.

    sessions.py  sign-in links and sessions (in the store, hashed), CSRF tokens
    render.py    the templates (Jinja2, autoescaped: a name is text wherever it is shown)
    app.py       the aiohttp application: security headers, who is signed in, errors as pages
    pages.py     what each page reads;  actions.py  what each form changes
    chart.py     usage over time, drawn as SVG on the server (no script, nothing fetched)
    server.py    listening: HTTPS with the org's certificate (plain text on loopback only)
"""
