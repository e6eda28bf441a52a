//! Property tests (proptest) over Lacquer's pure parsers and normalizers.
//!
//! Every property states something that could fail, mostly against a small
//! model written from the RFC or the module's documented rules, and feeds
//! arbitrary bytes too (those must never panic). Case counts, per property:
//!
//! | module | property | cases |
//! |---|---|---|
//! | directives | `cache_control_of_arbitrary_bytes` | 1024 |
//! | directives | `parse_of_arbitrary_strings` | 1024 |
//! | directives | `known_directives_parse_to_their_model` | 1024 |
//! | directives | `parse_delta_saturates` | 1024 |
//! | directives | `stored_directives_round_trip` | 1024 |
//! | directives | `targeted_field_of_arbitrary_bytes` | 512 |
//! | directives | `targeted_dictionary_parses_to_its_model` | 512 |
//! | vary | `normalize_is_idempotent_and_normal` | 1024 |
//! | vary | `normalize_request_rewrites_to_normalize` | 1024 |
//! | vary | `vary_value_folds` | 1024 |
//! | key | `normalize_host_is_idempotent` | 1024 |
//! | key | `percent_normal_form` | 1024 |
//! | key | `normalize_percent_is_idempotent` | 1024 |
//! | key | `path_keys` | 1024 |
//! | key | `sorted_query_keys` | 1024 |
//! | key | `unsorted_and_allowed_queries` | 1024 |
//! | key | `different_hosts_different_keys` | 1024 |
//! | key | `keyed_values` | 1024 |
//! | conditional | `range_matches_its_model` | 1024 |
//! | conditional | `range_of_arbitrary_bytes` | 1024 |
//! | conditional | `not_modified_matches_its_model` | 1024 |
//! | conditional | `not_modified_of_arbitrary_bytes` | 1024 |
//! | tags | `extract_keeps_the_limits` | 1024 |
//! | tags | `extract_of_arbitrary_bytes` | 1024 |
//! | tags | `pack_round_trips` | 1024 |
//! | purge | `purge_json_shape` | 1024 |
//! | purge | `purge_json_of_arbitrary_text` | 1024 |
//! | purge | `validate_names_the_problem` | 1024 |
//! | purge | `prefixes_cover_their_keys` | 1024 |
//! | config | `config_errors_name_the_key` | 256 |
//! | config | `arbitrary_toml_never_panics` | 256 |
//! | config | `arbitrary_text_never_panics` | 256 |
//! | config | `for_origin_of_any_url` | 256 |
//! | config | `load_reads_like_parse` (temp files) | 32 |
//!
//! The counts are set in each `proptest!` block (`ProptestConfig { cases, .. }`),
//! so `PROPTEST_CASES` does not change them; the whole binary runs in a few
//! seconds in the dev profile. Run: `cargo test --test properties`.
//!
//! Bugs these properties found, each fixed with a table test beside the code:
//! `normalize_percent` made new escapes out of a stray `%` (`%%341` → `%41`), the
//! query sort compared pairs as received (two keys for `?a=%7e&a=b` and `?a=~&a=b`),
//! `normalize_prefix` took a `://` in a path for a scheme and did not
//! percent-normalize, and the config accepted language lists that the Vary
//! normalizer could not keep idempotent (case twins, tags over 64 bytes).

#[path = "properties/support.rs"]
mod support;

#[path = "properties/conditional.rs"]
mod conditional;
#[path = "properties/config.rs"]
mod config;
#[path = "properties/directives.rs"]
mod directives;
#[path = "properties/key.rs"]
mod key;
#[path = "properties/purge.rs"]
mod purge;
#[path = "properties/tags.rs"]
mod tags;
#[path = "properties/vary.rs"]
mod vary;
