"""``quotagate demo``: a throw-away gateway, played through the seed scenarios.

stack       the mock LLM and the gateway as child processes on free ports
accounts    tenants and keys, made with the real ``quotagate`` CLI
stage       what a scenario is handed, and how it checks its expectations
scenarios   the scenarios, in the order they are played (later issues append)
runner      ``run_demo``: start, provision, play, summarise, always clean up
"""

from .runner import run_demo

__all__ = ["run_demo"]
