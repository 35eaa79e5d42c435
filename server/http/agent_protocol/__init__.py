"""The Agent Protocol front door (one module per resource): the part of LangGraph Platform's API a chat front end needs.

Clients written for LangGraph Platform (`langgraph_sdk.get_client(url=...)`, LangChain's Agent Chat UI)
talk to the service through these routes; a thread IS a session and a run IS a turn, stored, counted
and traced like any turn of /api/session-chat. Supported (docs/agent-protocol.md):

    POST   /threads                      threads.create   (metadata.store_id; thread_id; if_exists)
    GET    /threads/{id}                 threads.get      (with values: the conversation)
    DELETE /threads/{id}                 threads.delete   (soft delete, like DELETE /sessions/{id})
    POST   /threads/search               threads.search   (metadata, status, limit, offset)
    GET    /threads/{id}/state           threads.get_state
    GET|POST /threads/{id}/history       threads.get_history (the latest state: older ones are pruned)
    POST   /threads/{id}/runs/stream     runs.stream (stream_mode messages-tuple, values, updates, custom)
    POST   /runs/stream                  the Agent Protocol's form, thread_id in the body
    POST   /threads/{id}/runs, /runs     runs.create (a background run)
    GET    /threads/{id}/runs[/{run}]    runs.list, runs.get (also GET /runs/{run}, POST /runs/search)
    GET    /threads/{id}/runs/{run}/stream   runs.join_stream with Last-Event-ID (also GET /runs/{run}/stream)
    POST   /threads/{id}/runs/wait, GET /threads/{id}/runs/{run}/join   runs.wait, runs.join (also /runs/wait...)
    POST   /threads/{id}/runs/{run}/cancel   runs.cancel (also POST /runs/{run}/cancel)
    GET    /assistants/{id}, POST /assistants/search, GET /info

Shapes follow the Agent Protocol's OpenAPI document where it has the path (checked in
tests/test_agent_protocol.py against ../shared/reference/agent-protocol-openapi.json) and LangGraph's
Agent Server where the SDK calls a LangGraph extension (`/state`, `/threads/{id}/runs/stream`). What a
run cannot do here (commands, interrupts, checkpoints to resume from, webhooks, other stream modes)
is refused with 422 `unsupported`, never silently ignored.
"""

from server.http.agent_protocol.assistants import AssistantController
from server.http.agent_protocol.runs import RunController
from server.http.agent_protocol.streams import StreamController
from server.http.agent_protocol.threads import ThreadController

CONTROLLERS = [AssistantController, ThreadController, RunController, StreamController]
