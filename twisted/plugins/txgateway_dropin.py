# The twistd subcommand.  Only a lazy ServiceMaker lives here: importing anything heavier
# (the reactor above all) from a dropin breaks `twistd --reactor=...` for every subcommand.
from twisted.application.service import ServiceMaker

txgateway = ServiceMaker(
    "txgateway", "txgateway.tap", "LLM API gateway (OpenAI and Anthropic APIs)", "txgateway"
)
