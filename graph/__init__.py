"""The LangGraph state graph of one chat turn: retrieve, then generate. No HTTP, no business tables."""
