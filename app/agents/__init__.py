"""Agent access: an MCP server at /mcp (MCP_ENABLED).

The SDK is imported only by `app.agents.server`, which the application imports
when MCP is enabled: importing the SDK takes about 1.5 s of a process's start.
"""

MCP_PATH = "/mcp"
# Where app.agents.endpoint leaves the caller's AuthContext in the ASGI scope; the
# SDK hands tools the request (and so the scope) of the POST that carried the call.
AUTH_SCOPE_KEY = "integrations.auth"
