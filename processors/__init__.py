"""Pure domain logic: normalise, match, compare, limits, decide, receipts.

No faust, Kafka, Redis or asyncio here: plain values in, plain values out.
"""
