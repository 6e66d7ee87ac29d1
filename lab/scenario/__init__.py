"""The scenario: typed models of what a sweep runs (`spec`) and their strict YAML loading (`loader`)."""
