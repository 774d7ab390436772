"""The federation protocol: the aggregator's round stages, the node, and the checks each side makes."""
