//! Bootstrap election core (sans-IO): see SPEC 4.2. Filled in by the election work.
