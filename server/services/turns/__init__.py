"""A chat turn in parts, one job each; IntegratedChatService (server/services/chat.py) composes them."""
