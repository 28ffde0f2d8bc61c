"""The executor: stream a Plan's tensors through their transforms into the shard writer, within the memory budget."""
