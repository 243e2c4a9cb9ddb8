//! Sprig's text functions as Tinkerbell gives them to templates: `sprig.HermeticTxtFuncMap()`
//! (sprig v3), which leaves out what reads the clock, the environment, randomness sources and
//! DNS. No Rust crate offers sprig's functions for gotmpl (the `sprig` crate serves gtmpl, a
//! different engine), so they are written here, with Go's conversions (`cast`, `strval`).
//!
//! Where a function cannot behave as in Go, it refuses by name rather than differ silently
//! ([`UNSUPPORTED`]); `set` and `unset` return the changed dict but cannot change it in place,
//! as gotmpl's values are immutable (write `{{ $d = set $d "k" "v" }}`).
use std::{collections::BTreeMap, sync::Arc};

use gotmpl::{Template, TemplateError, Value};

type Result<T> = std::result::Result<T, TemplateError>;
type Map = BTreeMap<Arc<str>, Value>;

/// Sprig functions Wisp does not carry, with the reason given when a template calls one:
/// date parsing needs Go's layouts, semver Masterminds' constraint language, and the crypto
/// helpers key material no provisioning template should mint at render time.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("ago", "reads the clock"),
    ("durationRound", "needs Go's duration rounding"),
    ("toDate", "needs Go's time layouts"),
    ("mustToDate", "needs Go's time layouts"),
    ("unixEpoch", "needs Go's time values"),
    ("dateModify", "needs Go's time values"),
    ("mustDateModify", "needs Go's time values"),
    ("must_date_modify", "needs Go's time values"),
    ("semver", "needs Masterminds' semver"),
    ("semverCompare", "needs Masterminds' semver constraints"),
    ("bcrypt", "mints secrets"),
    ("htpasswd", "mints secrets"),
    ("genPrivateKey", "mints secrets"),
    ("derivePassword", "mints secrets"),
    ("buildCustomCert", "mints secrets"),
    ("genCA", "mints secrets"),
    ("genCAWithKey", "mints secrets"),
    ("genSelfSignedCert", "mints secrets"),
    ("genSelfSignedCertWithKey", "mints secrets"),
    ("genSignedCert", "mints secrets"),
    ("genSignedCertWithKey", "mints secrets"),
    ("encryptAES", "mints secrets"),
    ("decryptAES", "handles secrets"),
];

type Func = fn(&[Value]) -> Result<Value>;

/// gotmpl has no `From<bool>` for its values.
trait Truth {
    fn value(self) -> Value;
}

impl Truth for bool {
    fn value(self) -> Value {
        Value::Bool(self)
    }
}

/// Every supported function, by its sprig name.
const FUNCS: &[(&str, Func)] = &[
    ("hello", |_| Ok("Hello!".into())),
    ("duration", duration),
    // Strings.
    ("abbrev", abbrev),
    ("abbrevboth", abbrevboth),
    ("trunc", trunc),
    ("trim", |a| Ok(string(one("trim", a)?).trim().into())),
    ("upper", |a| {
        Ok(string(one("upper", a)?).to_uppercase().into())
    }),
    ("lower", |a| {
        Ok(string(one("lower", a)?).to_lowercase().into())
    }),
    ("title", |a| Ok(title(&string(one("title", a)?)).into())),
    ("untitle", |a| {
        Ok(untitle(&string(one("untitle", a)?)).into())
    }),
    ("substr", substr),
    ("repeat", |a| {
        let [count, s] = two("repeat", a)?;
        let count = usize::try_from(int(count)).map_err(|_| fail("repeat", "negative count"))?;
        let s = string(s);
        // The render's own output cap stops a runaway repeat before it is written; this stops
        // it before it is built.
        if s.len().saturating_mul(count) > super::MAX_RENDERED_BYTES {
            return Err(fail(
                "repeat",
                "the result exceeds the rendered template's cap",
            ));
        }
        Ok(s.repeat(count).into())
    }),
    ("trimall", trim_all),
    ("trimAll", trim_all),
    ("trimSuffix", |a| {
        let [suffix, s] = two("trimSuffix", a)?;
        let (suffix, s) = (string(suffix), string(s));
        Ok(s.strip_suffix(suffix.as_str()).unwrap_or(&s).into())
    }),
    ("trimPrefix", |a| {
        let [prefix, s] = two("trimPrefix", a)?;
        let (prefix, s) = (string(prefix), string(s));
        Ok(s.strip_prefix(prefix.as_str()).unwrap_or(&s).into())
    }),
    ("nospace", |a| {
        let s = string(one("nospace", a)?);
        Ok(s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .into())
    }),
    ("initials", |a| {
        let s = string(one("initials", a)?);
        Ok(s.split_whitespace()
            .filter_map(|word| word.chars().next())
            .collect::<String>()
            .into())
    }),
    ("swapcase", |a| {
        let s = string(one("swapcase", a)?);
        Ok(s.chars()
            .flat_map(|c| {
                if c.is_uppercase() {
                    c.to_lowercase().collect::<Vec<_>>()
                } else {
                    c.to_uppercase().collect()
                }
            })
            .collect::<String>()
            .into())
    }),
    ("shuffle", |a| {
        let mut chars: Vec<char> = string(one("shuffle", a)?).chars().collect();
        fastrand::shuffle(&mut chars);
        Ok(chars.into_iter().collect::<String>().into())
    }),
    ("snakecase", |a| {
        Ok(heck::ToSnakeCase::to_snake_case(string(one("snakecase", a)?).as_str()).into())
    }),
    ("camelcase", |a| {
        Ok(
            heck::ToUpperCamelCase::to_upper_camel_case(string(one("camelcase", a)?).as_str())
                .into(),
        )
    }),
    ("kebabcase", |a| {
        Ok(heck::ToKebabCase::to_kebab_case(string(one("kebabcase", a)?).as_str()).into())
    }),
    ("wrap", |a| {
        let [width, s] = two("wrap", a)?;
        Ok(wrap(&string(s), int(width), "\n").into())
    }),
    ("wrapWith", |a| {
        let [width, with, s] = three("wrapWith", a)?;
        Ok(wrap(&string(s), int(width), &string(with)).into())
    }),
    ("contains", |a| {
        let [needle, s] = two("contains", a)?;
        Ok(string(s).contains(string(needle).as_str()).value())
    }),
    ("hasPrefix", |a| {
        let [prefix, s] = two("hasPrefix", a)?;
        Ok(string(s).starts_with(string(prefix).as_str()).value())
    }),
    ("hasSuffix", |a| {
        let [suffix, s] = two("hasSuffix", a)?;
        Ok(string(s).ends_with(string(suffix).as_str()).value())
    }),
    ("quote", |a| Ok(quoted(a, |s| format!("{s:?}")).into())),
    ("squote", |a| Ok(quoted(a, |s| format!("'{s}'")).into())),
    ("cat", |a| Ok(quoted(a, |s| s.to_string()).into())),
    ("indent", |a| {
        let [spaces, s] = two("indent", a)?;
        Ok(indent(int(spaces), &string(s)).into())
    }),
    ("nindent", |a| {
        let [spaces, s] = two("nindent", a)?;
        Ok(format!("\n{}", indent(int(spaces), &string(s))).into())
    }),
    ("replace", |a| {
        let [old, new, s] = three("replace", a)?;
        Ok(string(s).replace(string(old).as_str(), &string(new)).into())
    }),
    ("plural", |a| {
        let [one_form, many, count] = three("plural", a)?;
        Ok(if int(count) == 1 { one_form } else { many }.clone())
    }),
    ("sha1sum", |a| {
        Ok(hex::<sha1::Sha1>(&string(one("sha1sum", a)?)).into())
    }),
    ("sha256sum", |a| {
        Ok(hex::<sha2::Sha256>(&string(one("sha256sum", a)?)).into())
    }),
    ("sha512sum", |a| {
        Ok(hex::<sha2::Sha512>(&string(one("sha512sum", a)?)).into())
    }),
    ("adler32sum", |a| {
        let mut adler = adler2::Adler32::new();
        adler.write_slice(string(one("adler32sum", a)?).as_bytes());
        Ok(adler.checksum().to_string().into())
    }),
    ("toString", |a| Ok(string(one("toString", a)?).into())),
    ("atoi", |a| {
        Ok(Value::Int(
            string(one("atoi", a)?).trim().parse().unwrap_or(0),
        ))
    }),
    ("int64", |a| Ok(Value::Int(int(one("int64", a)?)))),
    ("int", |a| Ok(Value::Int(int(one("int", a)?)))),
    ("float64", |a| Ok(Value::Float(float(one("float64", a)?)))),
    ("toDecimal", |a| {
        Ok(Value::Int(
            i64::from_str_radix(&string(one("toDecimal", a)?), 8).unwrap_or(0),
        ))
    }),
    ("seq", seq),
    ("split", |a| {
        let [sep, s] = two("split", a)?;
        Ok(indexed(string(s).split(string(sep).as_str())))
    }),
    ("splitList", |a| {
        let [sep, s] = two("splitList", a)?;
        Ok(strings(string(s).split(string(sep).as_str())))
    }),
    ("splitn", |a| {
        let [sep, n, s] = three("splitn", a)?;
        let n = usize::try_from(int(n)).unwrap_or(usize::MAX);
        Ok(indexed(string(s).splitn(n, string(sep).as_str())))
    }),
    ("toStrings", |a| {
        let items = list("toStrings", one("toStrings", a)?)?;
        Ok(strings(items.iter().map(string)))
    }),
    ("until", |a| {
        let count = int(one("until", a)?);
        until_step("until", 0, count, if count < 0 { -1 } else { 1 })
    }),
    ("untilStep", |a| {
        let [start, stop, step] = three("untilStep", a)?;
        until_step("untilStep", int(start), int(stop), int(step))
    }),
    // Integer and float arithmetic, with Go's integer division.
    ("add1", |a| {
        Ok(Value::Int(int(one("add1", a)?).wrapping_add(1)))
    }),
    ("add", |a| {
        Ok(Value::Int(a.iter().map(int).fold(0, i64::wrapping_add)))
    }),
    ("sub", |a| {
        let [x, y] = two("sub", a)?;
        Ok(Value::Int(int(x).wrapping_sub(int(y))))
    }),
    ("mul", |a| {
        Ok(Value::Int(a.iter().map(int).fold(1, i64::wrapping_mul)))
    }),
    ("div", |a| {
        let [x, y] = two("div", a)?;
        int(x)
            .checked_div(int(y))
            .map(Value::Int)
            .ok_or_else(|| fail("div", "division by zero"))
    }),
    ("mod", |a| {
        let [x, y] = two("mod", a)?;
        int(x)
            .checked_rem(int(y))
            .map(Value::Int)
            .ok_or_else(|| fail("mod", "division by zero"))
    }),
    ("max", |a| extreme("max", a, i64::max)),
    ("biggest", |a| extreme("biggest", a, i64::max)),
    ("min", |a| extreme("min", a, i64::min)),
    ("randInt", |a| {
        let [low, high] = two("randInt", a)?;
        let (low, high) = (int(low), int(high));
        if low >= high {
            return Err(fail("randInt", "the range is empty"));
        }
        Ok(Value::Int(fastrand::i64(low..high)))
    }),
    ("add1f", |a| Ok(Value::Float(float(one("add1f", a)?) + 1.0))),
    ("addf", |a| Ok(Value::Float(a.iter().map(float).sum()))),
    ("subf", |a| {
        let (first, rest) = a
            .split_first()
            .ok_or_else(|| fail("subf", "needs a value"))?;
        Ok(Value::Float(
            rest.iter().map(float).fold(float(first), |x, y| x - y),
        ))
    }),
    ("mulf", |a| Ok(Value::Float(a.iter().map(float).product()))),
    ("divf", |a| {
        let (first, rest) = a
            .split_first()
            .ok_or_else(|| fail("divf", "needs a value"))?;
        Ok(Value::Float(
            rest.iter().map(float).fold(float(first), |x, y| x / y),
        ))
    }),
    ("maxf", |a| {
        Ok(Value::Float(
            a.iter().map(float).fold(f64::NEG_INFINITY, f64::max),
        ))
    }),
    ("minf", |a| {
        Ok(Value::Float(
            a.iter().map(float).fold(f64::INFINITY, f64::min),
        ))
    }),
    ("ceil", |a| Ok(Value::Float(float(one("ceil", a)?).ceil()))),
    ("floor", |a| {
        Ok(Value::Float(float(one("floor", a)?).floor()))
    }),
    ("round", round),
    // Lists and defaults.
    ("join", |a| {
        let [sep, items] = two("join", a)?;
        let items: Vec<String> = match items {
            Value::List(items) => items
                .iter()
                .filter(|v| **v != Value::Nil)
                .map(string)
                .collect(),
            other => vec![string(other)],
        };
        Ok(items.join(&string(sep)).into())
    }),
    ("sortAlpha", |a| {
        let mut items: Vec<String> = match one("sortAlpha", a)? {
            Value::List(items) => items.iter().map(string).collect(),
            other => vec![string(other)],
        };
        items.sort();
        Ok(strings(items))
    }),
    ("default", |a| {
        let [fallback, given] = match a {
            [fallback] => [fallback, &Value::Nil],
            [fallback, given, ..] => [fallback, given],
            [] => return Err(fail("default", "needs a default value")),
        };
        Ok(if is_empty(given) { fallback } else { given }.clone())
    }),
    ("empty", |a| Ok(is_empty(one("empty", a)?).value())),
    ("coalesce", |a| {
        Ok(a.iter()
            .find(|v| !is_empty(v))
            .cloned()
            .unwrap_or(Value::Nil))
    }),
    ("all", |a| Ok(a.iter().all(|v| !is_empty(v)).value())),
    ("any", |a| Ok(a.iter().any(|v| !is_empty(v)).value())),
    ("compact", compact),
    ("mustCompact", compact),
    ("ternary", |a| {
        let [yes, no, condition] = three("ternary", a)?;
        Ok(if condition.is_truthy() { yes } else { no }.clone())
    }),
    ("deepCopy", |a| Ok(one("deepCopy", a)?.clone())),
    ("mustDeepCopy", |a| Ok(one("mustDeepCopy", a)?.clone())),
    ("typeOf", |a| Ok(go_type(one("typeOf", a)?).into())),
    ("typeIs", |a| {
        let [name, value] = two("typeIs", a)?;
        Ok((string(name) == go_type(value)).value())
    }),
    ("typeIsLike", |a| {
        let [name, value] = two("typeIsLike", a)?;
        let name = string(name);
        let ty = go_type(value);
        Ok((name == ty || name == format!("*{ty}")).value())
    }),
    ("kindOf", |a| Ok(go_kind(one("kindOf", a)?).into())),
    ("kindIs", |a| {
        let [name, value] = two("kindIs", a)?;
        Ok((string(name) == go_kind(value)).value())
    }),
    ("deepEqual", |a| {
        let [x, y] = two("deepEqual", a)?;
        Ok((x == y).value())
    }),
    // JSON.
    ("fromJson", |a| {
        Ok(from_json("fromJson", a).unwrap_or_else(|_| Value::Map(Arc::default())))
    }),
    ("mustFromJson", |a| from_json("mustFromJson", a)),
    ("toJson", |a| {
        Ok(to_json("toJson", a, false, true).unwrap_or_default().into())
    }),
    ("mustToJson", |a| {
        Ok(to_json("mustToJson", a, false, true)?.into())
    }),
    ("toPrettyJson", |a| {
        Ok(to_json("toPrettyJson", a, true, true)
            .unwrap_or_default()
            .into())
    }),
    ("mustToPrettyJson", |a| {
        Ok(to_json("mustToPrettyJson", a, true, true)?.into())
    }),
    ("toRawJson", |a| {
        Ok(to_json("toRawJson", a, false, false)
            .unwrap_or_default()
            .into())
    }),
    ("mustToRawJson", |a| {
        Ok(to_json("mustToRawJson", a, false, false)?.into())
    }),
    // Paths (slash-separated: the provisioning OS and Go's `path` agree).
    ("base", base),
    ("osBase", base),
    ("dir", dir),
    ("osDir", dir),
    ("clean", |a| Ok(clean(&string(one("clean", a)?)).into())),
    ("osClean", |a| Ok(clean(&string(one("osClean", a)?)).into())),
    ("ext", ext),
    ("osExt", ext),
    ("isAbs", |a| {
        Ok(string(one("isAbs", a)?).starts_with('/').value())
    }),
    ("osIsAbs", |a| {
        Ok(string(one("osIsAbs", a)?).starts_with('/').value())
    }),
    // Encodings: a failed decode yields the error's text, as in sprig.
    ("b64enc", |a| {
        use base64::Engine;
        Ok(base64::engine::general_purpose::STANDARD
            .encode(string(one("b64enc", a)?))
            .into())
    }),
    ("b64dec", |a| {
        use base64::Engine;
        Ok(
            match base64::engine::general_purpose::STANDARD.decode(string(one("b64dec", a)?)) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(err) => err.to_string(),
            }
            .into(),
        )
    }),
    ("b32enc", |a| {
        Ok(data_encoding::BASE32
            .encode(string(one("b32enc", a)?).as_bytes())
            .into())
    }),
    ("b32dec", |a| {
        Ok(
            match data_encoding::BASE32.decode(string(one("b32dec", a)?).as_bytes()) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(err) => err.to_string(),
            }
            .into(),
        )
    }),
    // Dicts.
    ("tuple", |a| Ok(Value::List(a.into()))),
    ("list", |a| Ok(Value::List(a.into()))),
    ("dict", |a| {
        let mut dict = Map::new();
        for pair in a.chunks(2) {
            let value = pair.get(1).cloned().unwrap_or_else(|| "".into());
            dict.insert(string(&pair[0]).into(), value);
        }
        Ok(Value::Map(Arc::new(dict)))
    }),
    ("get", |a| {
        let [dict, key] = two("get", a)?;
        Ok(map("get", dict)?
            .get(string(key).as_str())
            .cloned()
            .unwrap_or_else(|| "".into()))
    }),
    ("set", |a| {
        let [dict, key, value] = three("set", a)?;
        let mut dict = map("set", dict)?.as_ref().clone();
        dict.insert(string(key).into(), value.clone());
        Ok(Value::Map(Arc::new(dict)))
    }),
    ("unset", |a| {
        let [dict, key] = two("unset", a)?;
        let mut dict = map("unset", dict)?.as_ref().clone();
        dict.remove(string(key).as_str());
        Ok(Value::Map(Arc::new(dict)))
    }),
    ("hasKey", |a| {
        let [dict, key] = two("hasKey", a)?;
        Ok(map("hasKey", dict)?
            .contains_key(string(key).as_str())
            .value())
    }),
    ("pluck", |a| {
        let (key, dicts) = a
            .split_first()
            .ok_or_else(|| fail("pluck", "needs a key"))?;
        let key = string(key);
        let mut found = Vec::new();
        for dict in dicts {
            if let Some(value) = map("pluck", dict)?.get(key.as_str()) {
                found.push(value.clone());
            }
        }
        Ok(Value::List(found.into()))
    }),
    ("keys", |a| {
        let mut keys = Vec::new();
        for dict in a {
            keys.extend(map("keys", dict)?.keys().map(|k| Value::String(k.clone())));
        }
        Ok(Value::List(keys.into()))
    }),
    ("values", |a| {
        Ok(Value::List(
            map("values", one("values", a)?)?
                .values()
                .cloned()
                .collect(),
        ))
    }),
    ("pick", |a| {
        let (dict, keys) = a
            .split_first()
            .ok_or_else(|| fail("pick", "needs a dict"))?;
        let keys: Vec<String> = keys.iter().map(string).collect();
        let dict = map("pick", dict)?;
        Ok(Value::Map(Arc::new(
            dict.iter()
                .filter(|(k, _)| keys.iter().any(|key| key.as_str() == k.as_ref()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )))
    }),
    ("omit", |a| {
        let (dict, keys) = a
            .split_first()
            .ok_or_else(|| fail("omit", "needs a dict"))?;
        let keys: Vec<String> = keys.iter().map(string).collect();
        let dict = map("omit", dict)?;
        Ok(Value::Map(Arc::new(
            dict.iter()
                .filter(|(k, _)| !keys.iter().any(|key| key.as_str() == k.as_ref()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )))
    }),
    ("merge", |a| merge("merge", a, false)),
    ("mustMerge", |a| merge("mustMerge", a, false)),
    ("mergeOverwrite", |a| merge("mergeOverwrite", a, true)),
    ("mustMergeOverwrite", |a| {
        merge("mustMergeOverwrite", a, true)
    }),
    ("dig", |a| {
        // dig "a" "b" default dict
        let [keys @ .., fallback, dict] = a else {
            return Err(fail("dig", "needs keys, a default and a dict"));
        };
        let mut current = dict.clone();
        for key in keys {
            let next = map("dig", &current)?.get(string(key).as_str()).cloned();
            match next {
                Some(next) => current = next,
                None => return Ok(fallback.clone()),
            }
        }
        Ok(current)
    }),
    // List functions; the must- forms are the same, as these only fail on a non-list.
    ("append", |a| push("append", a)),
    ("push", |a| push("push", a)),
    ("mustAppend", |a| push("mustAppend", a)),
    ("mustPush", |a| push("mustPush", a)),
    ("prepend", |a| prepend("prepend", a)),
    ("mustPrepend", |a| prepend("mustPrepend", a)),
    ("first", |a| {
        Ok(list("first", one("first", a)?)?
            .first()
            .cloned()
            .unwrap_or(Value::Nil))
    }),
    ("mustFirst", |a| {
        Ok(list("mustFirst", one("mustFirst", a)?)?
            .first()
            .cloned()
            .unwrap_or(Value::Nil))
    }),
    ("last", |a| {
        Ok(list("last", one("last", a)?)?
            .last()
            .cloned()
            .unwrap_or(Value::Nil))
    }),
    ("mustLast", |a| {
        Ok(list("mustLast", one("mustLast", a)?)?
            .last()
            .cloned()
            .unwrap_or(Value::Nil))
    }),
    ("rest", |a| {
        Ok(list_part(list("rest", one("rest", a)?)?, |l| l.get(1..)))
    }),
    ("mustRest", |a| {
        Ok(list_part(list("mustRest", one("mustRest", a)?)?, |l| {
            l.get(1..)
        }))
    }),
    ("initial", |a| {
        Ok(list_part(list("initial", one("initial", a)?)?, |l| {
            l.get(..l.len().saturating_sub(1))
        }))
    }),
    ("mustInitial", |a| {
        Ok(list_part(
            list("mustInitial", one("mustInitial", a)?)?,
            |l| l.get(..l.len().saturating_sub(1)),
        ))
    }),
    ("reverse", |a| {
        Ok(Value::List(
            list("reverse", one("reverse", a)?)?
                .iter()
                .rev()
                .cloned()
                .collect(),
        ))
    }),
    ("mustReverse", |a| {
        Ok(Value::List(
            list("mustReverse", one("mustReverse", a)?)?
                .iter()
                .rev()
                .cloned()
                .collect(),
        ))
    }),
    ("uniq", |a| uniq("uniq", a)),
    ("mustUniq", |a| uniq("mustUniq", a)),
    ("without", |a| without("without", a)),
    ("mustWithout", |a| without("mustWithout", a)),
    ("has", |a| has("has", a)),
    ("mustHas", |a| has("mustHas", a)),
    ("slice", |a| slice("slice", a)),
    ("mustSlice", |a| slice("mustSlice", a)),
    ("concat", |a| {
        let mut all = Vec::new();
        for items in a {
            all.extend(list("concat", items)?.iter().cloned());
        }
        Ok(Value::List(all.into()))
    }),
    ("chunk", |a| chunk("chunk", a)),
    ("mustChunk", |a| chunk("mustChunk", a)),
    ("fail", |a| {
        Err(TemplateError::Exec(string(one("fail", a)?)))
    }),
    // Regular expressions: RE2 syntax, as Go's regexp. The plain forms swallow a bad pattern.
    ("regexMatch", |a| {
        Ok(regex_match("regexMatch", a).unwrap_or(false).value())
    }),
    ("mustRegexMatch", |a| {
        Ok(regex_match("mustRegexMatch", a)?.value())
    }),
    ("regexFind", |a| {
        Ok(regex_find("regexFind", a).unwrap_or_default().into())
    }),
    ("mustRegexFind", |a| {
        Ok(regex_find("mustRegexFind", a)?.into())
    }),
    ("regexFindAll", |a| {
        Ok(regex_find_all("regexFindAll", a).unwrap_or_else(|_| Value::List(Arc::from([]))))
    }),
    ("mustRegexFindAll", |a| {
        regex_find_all("mustRegexFindAll", a)
    }),
    ("regexReplaceAll", |a| {
        Ok(regex_replace("regexReplaceAll", a, false)
            .unwrap_or_default()
            .into())
    }),
    ("mustRegexReplaceAll", |a| {
        Ok(regex_replace("mustRegexReplaceAll", a, false)?.into())
    }),
    ("regexReplaceAllLiteral", |a| {
        Ok(regex_replace("regexReplaceAllLiteral", a, true)
            .unwrap_or_default()
            .into())
    }),
    ("mustRegexReplaceAllLiteral", |a| {
        Ok(regex_replace("mustRegexReplaceAllLiteral", a, true)?.into())
    }),
    ("regexSplit", |a| {
        Ok(regex_split("regexSplit", a).unwrap_or_else(|_| Value::List(Arc::from([]))))
    }),
    ("mustRegexSplit", |a| regex_split("mustRegexSplit", a)),
    ("regexQuoteMeta", |a| {
        Ok(regex::escape(&string(one("regexQuoteMeta", a)?)).into())
    }),
    // URLs.
    ("urlParse", url_parse),
    ("urlJoin", url_join),
];

/// Registers sprig's hermetic text functions on `template`, each charged to `budget`.
pub fn register(mut template: Template, budget: &super::Budget) -> Template {
    for (name, func) in FUNCS {
        template = template.func(name, budget.charged(name, *func));
    }
    for (name, reason) in UNSUPPORTED {
        let message =
            format!("{name}: sprig's {name} is not available in Wisp's templates (it {reason})");
        template = template.func(name, move |_| Err(TemplateError::Exec(message.clone())));
    }
    template
}

fn fail(name: &str, message: &str) -> TemplateError {
    TemplateError::Exec(format!("{name}: {message}"))
}

fn one<'a>(name: &str, args: &'a [Value]) -> Result<&'a Value> {
    match args {
        [value] => Ok(value),
        _ => Err(fail(name, &format!("takes 1 argument, got {}", args.len()))),
    }
}

fn two<'a>(name: &str, args: &'a [Value]) -> Result<[&'a Value; 2]> {
    match args {
        [x, y] => Ok([x, y]),
        _ => Err(fail(
            name,
            &format!("takes 2 arguments, got {}", args.len()),
        )),
    }
}

fn three<'a>(name: &str, args: &'a [Value]) -> Result<[&'a Value; 3]> {
    match args {
        [x, y, z] => Ok([x, y, z]),
        _ => Err(fail(
            name,
            &format!("takes 3 arguments, got {}", args.len()),
        )),
    }
}

/// Sprig's `strval`: a string as it is, anything else as `%v` prints it.
fn string(value: &Value) -> String {
    match value {
        Value::String(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// `cast.ToInt64`: numbers truncated, numeric strings parsed, booleans 1 or 0, else 0.
fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        Value::Uint(n) => *n as i64,
        Value::Float(f) => *f as i64,
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// `cast.ToFloat64`.
fn float(value: &Value) -> f64 {
    match value {
        Value::Int(n) => *n as f64,
        Value::Uint(n) => *n as f64,
        Value::Float(f) => *f,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::String(s) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Sprig's `empty`: nil, false, zero, and empty strings, lists and dicts.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Nil => true,
        Value::Bool(b) => !b,
        Value::Int(n) => *n == 0,
        Value::Uint(n) => *n == 0,
        Value::Float(f) => *f == 0.0,
        Value::String(s) => s.is_empty(),
        Value::List(items) => items.is_empty(),
        Value::Map(map) => map.is_empty(),
        _ => false,
    }
}

fn list<'a>(name: &str, value: &'a Value) -> Result<&'a [Value]> {
    match value {
        Value::List(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(fail(
            name,
            &format!("cannot find a list in type {}", go_type(other)),
        )),
    }
}

fn map<'a>(name: &str, value: &'a Value) -> Result<&'a Arc<Map>> {
    match value {
        Value::Map(map) => Ok(map),
        other => Err(fail(
            name,
            &format!("expected a dict, got {}", go_type(other)),
        )),
    }
}

fn strings<S: Into<Arc<str>>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::List(items.into_iter().map(|s| Value::String(s.into())).collect())
}

/// `split`'s result: a dict of `_0`, `_1`, …
fn indexed<'a>(parts: impl Iterator<Item = &'a str>) -> Value {
    Value::Map(Arc::new(
        parts
            .enumerate()
            .map(|(i, part)| (Arc::from(format!("_{i}")), Value::from(part)))
            .collect(),
    ))
}

/// Go's type names for template values, as `typeOf` prints them.
fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Nil => "<nil>",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Uint(_) => "uint64",
        Value::Float(_) => "float64",
        Value::String(_) => "string",
        Value::List(_) => "[]interface {}",
        Value::Map(_) => "map[string]interface {}",
        _ => "func",
    }
}

fn go_kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "invalid",
        Value::List(_) => "slice",
        Value::Map(_) => "map",
        other => go_type(other),
    }
}

fn duration(args: &[Value]) -> Result<Value> {
    let mut seconds = int(one("duration", args)?);
    if seconds == 0 {
        return Ok("0s".into());
    }
    let sign = if seconds < 0 { "-" } else { "" };
    seconds = seconds.abs();
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    Ok(match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, _) => format!("{sign}{m}m{s}s"),
        _ => format!("{sign}{h}h{m}m{s}s"),
    }
    .into())
}

fn abbrev(args: &[Value]) -> Result<Value> {
    let [width, s] = two("abbrev", args)?;
    let (width, s) = (int(width), string(s));
    let chars: Vec<char> = s.chars().collect();
    if width < 4 || chars.len() as i64 <= width {
        return Ok(s.into());
    }
    let keep = (width - 3) as usize;
    Ok(format!("{}...", chars[..keep].iter().collect::<String>()).into())
}

fn abbrevboth(args: &[Value]) -> Result<Value> {
    let [left, width, s] = three("abbrevboth", args)?;
    let (left, width, s) = (int(left).max(0) as usize, int(width), string(s));
    let chars: Vec<char> = s.chars().collect();
    if width < 7 || chars.len() as i64 <= width {
        return Ok(s.into());
    }
    let width = width as usize;
    let left = left.min(chars.len());
    let tail = if chars.len() - left > width - 3 {
        let end = (left + width - 6).min(chars.len());
        format!("{}...", chars[left..end].iter().collect::<String>())
    } else {
        chars[chars.len() - (width - 3)..].iter().collect()
    };
    Ok(if left > 0 { format!("...{tail}") } else { tail }.into())
}

fn trunc(args: &[Value]) -> Result<Value> {
    let [count, s] = two("trunc", args)?;
    let (count, s) = (int(count), string(s));
    let len = s.len() as i64;
    let cut = |at: i64| s.get(at as usize..).or_else(|| s.get(..at as usize));
    Ok(if count >= 0 && len > count {
        s.get(..count as usize).unwrap_or(&s).to_string()
    } else if count < 0 && len + count > 0 {
        cut(len + count).unwrap_or(&s).to_string()
    } else {
        s.clone()
    }
    .into())
}

fn substr(args: &[Value]) -> Result<Value> {
    let [start, end, s] = three("substr", args)?;
    let (start, end, s) = (int(start), int(end), string(s));
    let len = s.len() as i64;
    let part = if start < 0 {
        s.get(..end.clamp(0, len) as usize)
    } else if end < 0 || end > len {
        s.get(start.min(len) as usize..)
    } else {
        s.get(start.min(end) as usize..end as usize)
    };
    Ok(part.unwrap_or_default().into())
}

fn trim_all(args: &[Value]) -> Result<Value> {
    let [cutset, s] = two("trimAll", args)?;
    let cutset = string(cutset);
    Ok(string(s).trim_matches(|c| cutset.contains(c)).into())
}

/// Go's (deprecated) `strings.Title`: the first letter of each word in upper case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_start = true;
    for c in s.chars() {
        if at_start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_start = !c.is_alphanumeric() && c != '_' && c != '\'';
    }
    out
}

fn untitle(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_start = true;
    for c in s.chars() {
        if at_start {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
        at_start = c.is_whitespace();
    }
    out
}

fn wrap(s: &str, width: i64, newline: &str) -> String {
    let width = usize::try_from(width).unwrap_or(1).max(1);
    let mut lines: Vec<String> = Vec::new();
    for line in s.split('\n') {
        let mut current = String::new();
        for word in line.split(' ').filter(|w| !w.is_empty()) {
            if !current.is_empty() && current.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        lines.push(current);
    }
    lines.join(newline)
}

fn quoted(args: &[Value], quote: impl Fn(&str) -> String) -> String {
    args.iter()
        .filter(|value| **value != Value::Nil)
        .map(|value| quote(&string(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(spaces: i64, s: &str) -> String {
    let pad = " ".repeat(usize::try_from(spaces).unwrap_or(0));
    format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))
}

fn hex<D: sha2::Digest>(s: &str) -> String {
    D::digest(s.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn seq(args: &[Value]) -> Result<Value> {
    let numbers: Vec<i64> = args.iter().map(int).collect();
    let (start, step, end) = match numbers.as_slice() {
        [end] => (1, 1, *end),
        [start, end] => (*start, if start <= end { 1 } else { -1 }, *end),
        [start, step, end] => (*start, *step, *end),
        _ => return Err(fail("seq", "takes 1 to 3 numbers")),
    };
    match until_step("seq", start, end.saturating_add(step.signum()), step)? {
        Value::List(items) => Ok(items
            .iter()
            .map(string)
            .collect::<Vec<_>>()
            .join(" ")
            .into()),
        _ => Ok("".into()),
    }
}

/// The longest list `until`, `untilStep` and `seq` build: Go would build any, and run out of
/// memory; a template that needs more than this is a mistake.
const MAX_LIST: usize = 1 << 20;

fn until_step(name: &str, start: i64, stop: i64, step: i64) -> Result<Value> {
    let mut items = Vec::new();
    let mut at = start;
    while (step > 0 && at < stop) || (step < 0 && at > stop) {
        if items.len() == MAX_LIST {
            return Err(fail(name, &format!("more than {MAX_LIST} items")));
        }
        items.push(Value::Int(at));
        at = at.saturating_add(step);
    }
    Ok(Value::List(items.into()))
}

fn extreme(name: &str, args: &[Value], pick: fn(i64, i64) -> i64) -> Result<Value> {
    let (first, rest) = args
        .split_first()
        .ok_or_else(|| fail(name, "needs a value"))?;
    Ok(Value::Int(rest.iter().map(int).fold(int(first), pick)))
}

fn round(args: &[Value]) -> Result<Value> {
    let (value, places, half) = match args {
        [value, places] => (float(value), int(places), 0.5),
        [value, places, half] => (float(value), int(places), float(half)),
        _ => {
            return Err(fail(
                "round",
                "takes a value, places and an optional rounding point",
            ))
        }
    };
    let scale = 10f64.powi(places as i32);
    let scaled = value * scale;
    let whole = scaled.trunc();
    let rounded = if (scaled - whole).abs() >= half {
        whole + scaled.signum()
    } else {
        whole
    };
    Ok(Value::Float(rounded / scale))
}

fn compact(args: &[Value]) -> Result<Value> {
    let items = list("compact", one("compact", args)?)?;
    Ok(Value::List(
        items.iter().filter(|v| !is_empty(v)).cloned().collect(),
    ))
}

fn from_json(name: &str, args: &[Value]) -> Result<Value> {
    let json: serde_json::Value = serde_json::from_str(&string(one(name, args)?))
        .map_err(|err| fail(name, &err.to_string()))?;
    super::functions::template_value(json)
}

fn to_json(name: &str, args: &[Value], pretty: bool, escape_html: bool) -> Result<String> {
    let json = super::functions::json_of(one(name, args)?).map_err(|err| fail(name, &err))?;
    let text = if pretty {
        serde_json::to_string_pretty(&json)
    } else {
        serde_json::to_string(&json)
    }
    .map_err(|err| fail(name, &err.to_string()))?;
    // Go's encoding/json escapes these so that its output is safe inside HTML.
    Ok(if escape_html {
        text.replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
    } else {
        text
    })
}

/// Go's `path.Clean`.
fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn base(args: &[Value]) -> Result<Value> {
    let path = string(one("base", args)?);
    if path.is_empty() {
        return Ok(".".into());
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    Ok(trimmed.rsplit('/').next().unwrap_or(trimmed).into())
}

fn dir(args: &[Value]) -> Result<Value> {
    let path = string(one("dir", args)?);
    let dir = match path.rfind('/') {
        Some(at) => &path[..=at],
        None => "",
    };
    Ok(clean(dir).into())
}

fn ext(args: &[Value]) -> Result<Value> {
    let path = string(one("ext", args)?);
    let name = path.rsplit('/').next().unwrap_or(&path);
    Ok(name.rfind('.').map_or("", |at| &name[at..]).into())
}

fn merge(name: &str, args: &[Value], overwrite: bool) -> Result<Value> {
    let (first, rest) = args
        .split_first()
        .ok_or_else(|| fail(name, "needs a dict"))?;
    let mut merged = map(name, first)?.as_ref().clone();
    for source in rest {
        merge_into(&mut merged, map(name, source)?, overwrite);
    }
    Ok(Value::Map(Arc::new(merged)))
}

/// mergo's deep merge: dicts merge key by key; other values fill only empty places unless
/// `overwrite`.
fn merge_into(target: &mut Map, source: &Map, overwrite: bool) {
    for (key, value) in source {
        match (target.get(key), value) {
            (Some(Value::Map(existing)), Value::Map(incoming)) => {
                let mut inner = existing.as_ref().clone();
                merge_into(&mut inner, incoming, overwrite);
                target.insert(key.clone(), Value::Map(Arc::new(inner)));
            }
            (Some(existing), _) if !overwrite && !is_empty(existing) => {}
            (Some(_), incoming) if overwrite && is_empty(incoming) => {}
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

fn push(name: &str, args: &[Value]) -> Result<Value> {
    let [items, value] = two(name, args)?;
    let mut items = list(name, items)?.to_vec();
    items.push(value.clone());
    Ok(Value::List(items.into()))
}

fn prepend(name: &str, args: &[Value]) -> Result<Value> {
    let [items, value] = two(name, args)?;
    let mut all = vec![value.clone()];
    all.extend(list(name, items)?.iter().cloned());
    Ok(Value::List(all.into()))
}

fn list_part(items: &[Value], part: impl Fn(&[Value]) -> Option<&[Value]>) -> Value {
    Value::List(part(items).unwrap_or_default().into())
}

fn uniq(name: &str, args: &[Value]) -> Result<Value> {
    let mut seen: Vec<Value> = Vec::new();
    for item in list(name, one(name, args)?)? {
        if !seen.contains(item) {
            seen.push(item.clone());
        }
    }
    Ok(Value::List(seen.into()))
}

fn without(name: &str, args: &[Value]) -> Result<Value> {
    let (items, omitted) = args
        .split_first()
        .ok_or_else(|| fail(name, "needs a list"))?;
    Ok(Value::List(
        list(name, items)?
            .iter()
            .filter(|item| !omitted.contains(item))
            .cloned()
            .collect(),
    ))
}

fn has(name: &str, args: &[Value]) -> Result<Value> {
    let [needle, haystack] = two(name, args)?;
    Ok(list(name, haystack)?.contains(needle).value())
}

fn slice(name: &str, args: &[Value]) -> Result<Value> {
    let (items, bounds) = args
        .split_first()
        .ok_or_else(|| fail(name, "needs a list"))?;
    let items = list(name, items)?;
    let bound = |at: usize| {
        bounds
            .get(at)
            .map(|b| usize::try_from(int(b)).unwrap_or(usize::MAX))
    };
    let start = bound(0).unwrap_or(0);
    let end = bound(1).unwrap_or(items.len());
    items
        .get(start..end)
        .map(|part| Value::List(part.into()))
        .ok_or_else(|| fail(name, &format!("[{start}:{end}] is out of range")))
}

fn chunk(name: &str, args: &[Value]) -> Result<Value> {
    let [size, items] = two(name, args)?;
    let size = usize::try_from(int(size)).ok().filter(|s| *s > 0);
    let Some(size) = size else {
        return Err(fail(name, "the chunk size must be positive"));
    };
    Ok(Value::List(
        list(name, items)?
            .chunks(size)
            .map(|part| Value::List(part.into()))
            .collect(),
    ))
}

fn compile(name: &str, pattern: &Value) -> Result<regex::Regex> {
    regex::Regex::new(&string(pattern)).map_err(|err| fail(name, &err.to_string()))
}

fn regex_match(name: &str, args: &[Value]) -> Result<bool> {
    let [pattern, s] = two(name, args)?;
    Ok(compile(name, pattern)?.is_match(&string(s)))
}

fn regex_find(name: &str, args: &[Value]) -> Result<String> {
    let [pattern, s] = two(name, args)?;
    let s = string(s);
    Ok(compile(name, pattern)?
        .find(&s)
        .map(|m| m.as_str().to_string())
        .unwrap_or_default())
}

fn regex_find_all(name: &str, args: &[Value]) -> Result<Value> {
    let [pattern, s, n] = three(name, args)?;
    let (s, n) = (string(s), int(n));
    let found = compile(name, pattern)?
        .find_iter(&s)
        .take(usize::try_from(n).unwrap_or(usize::MAX))
        .map(|m| m.as_str().to_string())
        .collect::<Vec<_>>();
    Ok(strings(found))
}

fn regex_replace(name: &str, args: &[Value], literal: bool) -> Result<String> {
    let [pattern, s, replacement] = three(name, args)?;
    let (s, replacement) = (string(s), string(replacement));
    let regex = compile(name, pattern)?;
    Ok(if literal {
        regex.replace_all(&s, regex::NoExpand(&replacement))
    } else {
        regex.replace_all(&s, replacement.as_str())
    }
    .into_owned())
}

fn regex_split(name: &str, args: &[Value]) -> Result<Value> {
    let [pattern, s, n] = three(name, args)?;
    let (s, n) = (string(s), int(n));
    let regex = compile(name, pattern)?;
    Ok(match usize::try_from(n) {
        Ok(0) => Value::List(Arc::from([])),
        Ok(n) => strings(regex.splitn(&s, n)),
        Err(_) => strings(regex.split(&s)),
    })
}

fn url_parse(args: &[Value]) -> Result<Value> {
    let text = string(one("urlParse", args)?);
    let url = url::Url::parse(&text).map_err(|err| fail("urlParse", &err.to_string()))?;
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => String::new(),
    };
    let userinfo = match (url.username(), url.password()) {
        ("", None) => String::new(),
        (user, Some(password)) => format!("{user}:{password}"),
        (user, None) => user.to_string(),
    };
    let fields = [
        ("scheme", url.scheme().to_string()),
        ("host", host),
        ("hostname", url.host_str().unwrap_or_default().to_string()),
        ("path", url.path().to_string()),
        ("query", url.query().unwrap_or_default().to_string()),
        ("opaque", String::new()),
        ("fragment", url.fragment().unwrap_or_default().to_string()),
        ("userinfo", userinfo),
    ];
    Ok(Value::Map(Arc::new(
        fields
            .into_iter()
            .map(|(key, value)| (Arc::from(key), Value::from(value)))
            .collect(),
    )))
}

fn url_join(args: &[Value]) -> Result<Value> {
    let parts = map("urlJoin", one("urlJoin", args)?)?;
    let field = |key: &str| parts.get(key).map(string).unwrap_or_default();
    let mut out = String::new();
    if !field("scheme").is_empty() {
        out.push_str(&field("scheme"));
        out.push(':');
    }
    let host = field("host");
    if !host.is_empty() {
        out.push_str("//");
        if !field("userinfo").is_empty() {
            out.push_str(&field("userinfo"));
            out.push('@');
        }
        out.push_str(&host);
    }
    out.push_str(&field("path"));
    if !field("query").is_empty() {
        out.push('?');
        out.push_str(&field("query"));
    }
    if !field("fragment").is_empty() {
        out.push('#');
        out.push_str(&field("fragment"));
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str) -> std::result::Result<String, String> {
        register(Template::new("t"), &crate::template::Budget::default())
            .parse(source)
            .and_then(|t| t.execute_to_string(&Value::Nil))
            .map_err(|err| err.to_string())
    }

    /// Sprig's documented examples, in the forms Tinkerbell templates write them.
    #[test]
    fn sprig_examples() {
        let cases = [
            (r#"{{ "  hi  " | trim }}"#, "hi"),
            (r#"{{ "hello" | upper | repeat 2 }}"#, "HELLOHELLO"),
            (r#"{{ "hello world" | title }}"#, "Hello World"),
            (r#"{{ substr 0 5 "hello world" }}"#, "hello"),
            (r#"{{ trunc 5 "hello world" }}"#, "hello"),
            (r#"{{ trunc -5 "hello world" }}"#, "world"),
            (r#"{{ abbrev 5 "hello world" }}"#, "he..."),
            (r#"{{ trimAll "$" "$5.00$" }}"#, "5.00"),
            (
                r#"{{ "52:54:00:12:34:01" | replace ":" "-" }}"#,
                "52-54-00-12-34-01",
            ),
            (r#"{{ "FirstName" | snakecase }}"#, "first_name"),
            (r#"{{ "http_server" | camelcase }}"#, "HttpServer"),
            (r#"{{ "FirstName" | kebabcase }}"#, "first-name"),
            (r#"{{ quote "a" 1 }}"#, r#""a" "1""#),
            (r#"{{ squote "a" }}"#, "'a'"),
            (
                r#"{{ cat "hello" "beautiful" "world" }}"#,
                "hello beautiful world",
            ),
            (r#"{{ "a\nb" | indent 2 }}"#, "  a\n  b"),
            (r#"{{ "a" | nindent 2 }}"#, "\n  a"),
            (
                r#"{{ plural "one anchovy" "many anchovies" 2 }}"#,
                "many anchovies",
            ),
            (
                r#"{{ sha256sum "Hello world!" }}"#,
                "c0535e4be2b79ffd93291305436bf889314e4a3faec05ecffcbb7df31ad9e51a",
            ),
            (
                r#"{{ sha1sum "Hello world!" }}"#,
                "d3486ae9136e7856bc42212385ea797094475802",
            ),
            (r#"{{ adler32sum "Hello world!" }}"#, "487130206"),
            (
                r#"{{ add 1 2 3 }} {{ sub 3 2 }} {{ mul 2 3 }} {{ div 7 2 }} {{ mod 7 2 }}"#,
                "6 1 6 3 1",
            ),
            (r#"{{ max 1 5 3 }} {{ min 4 2 9 }} {{ add1 4 }}"#, "5 2 5"),
            (r#"{{ round 123.555555 3 }}"#, "123.556"),
            (
                r#"{{ seq 3 }}|{{ seq 2 4 }}|{{ seq 0 2 6 }}"#,
                "1 2 3|2 3 4|0 2 4 6",
            ),
            (r#"{{ until 3 }}"#, "[0 1 2]"),
            (r#"{{ untilStep 3 6 2 }}"#, "[3 5]"),
            (r#"{{ "0777" | toDecimal }}"#, "511"),
            (r#"{{ atoi "42" | add1 }}"#, "43"),
            (r#"{{ $x := split "$" "foo$bar$baz" }}{{ $x._1 }}"#, "bar"),
            (r#"{{ splitList "," "a,b" | join "+" }}"#, "a+b"),
            (r#"{{ list "b" "a" "c" | sortAlpha }}"#, "[a b c]"),
            (
                r#"{{ "" | default "foo" }} {{ "bar" | default "foo" }}"#,
                "foo bar",
            ),
            (
                r#"{{ empty "" }} {{ empty 0 }} {{ empty "x" }}"#,
                "true true false",
            ),
            (r#"{{ coalesce "" 0 "x" }}"#, "x"),
            (r#"{{ ternary "yes" "no" true }}"#, "yes"),
            (r#"{{ list 1 "" 2 | compact }}"#, "[1 2]"),
            (
                r#"{{ $d := dict "a" 1 "b" 2 }}{{ get $d "a" }} {{ hasKey $d "b" }} {{ keys $d }}"#,
                "1 true [a b]",
            ),
            (
                r#"{{ $d := dict "a" 1 }}{{ $d = set $d "b" 2 }}{{ $d.b }} {{ unset $d "a" | keys }}"#,
                "2 [b]",
            ),
            (
                r#"{{ pick (dict "a" 1 "b" 2) "a" | keys }} {{ omit (dict "a" 1 "b" 2) "a" | keys }}"#,
                "[a] [b]",
            ),
            (
                r#"{{ $m := merge (dict "a" 1) (dict "a" 2 "b" 3) }}{{ $m.a }}{{ $m.b }}"#,
                "13",
            ),
            (
                r#"{{ $m := mergeOverwrite (dict "a" 1) (dict "a" 2) }}{{ $m.a }}"#,
                "2",
            ),
            (
                r#"{{ dig "a" "b" "none" (dict "a" (dict "b" "found")) }} {{ dig "x" "none" (dict) }}"#,
                "found none",
            ),
            (r#"{{ pluck "a" (dict "a" 1) (dict "b" 2) }}"#, "[1]"),
            (
                r#"{{ $l := list 1 2 3 }}{{ first $l }} {{ last $l }} {{ rest $l }} {{ initial $l }} {{ reverse $l }}"#,
                "1 3 [2 3] [1 2] [3 2 1]",
            ),
            (
                r#"{{ append (list 1) 2 }} {{ prepend (list 1) 0 }} {{ concat (list 1) (list 2 3) }}"#,
                "[1 2] [0 1] [1 2 3]",
            ),
            (
                r#"{{ uniq (list 1 1 2) }} {{ without (list 1 2 3) 2 }} {{ has 2 (list 1 2) }}"#,
                "[1 2] [1 3] true",
            ),
            (
                r#"{{ slice (list 1 2 3 4) 1 3 }} {{ chunk 2 (list 1 2 3) }}"#,
                "[2 3] [[1 2] [3]]",
            ),
            (
                r#"{{ regexMatch "^[a-z]+$" "abc" }} {{ regexFind "[0-9]+" "ab12cd" }}"#,
                "true 12",
            ),
            (
                r#"{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}"#,
                "-W-xxW-",
            ),
            (
                r#"{{ regexReplaceAllLiteral "a(x*)b" "-ab-" "${1}" }}"#,
                "-${1}-",
            ),
            (
                r#"{{ regexSplit "z+" "pizza" -1 }} {{ regexFindAll "a" "banana" 2 }}"#,
                "[pi a] [a a]",
            ),
            (
                r#"{{ b64enc "hello" }} {{ "aGVsbG8=" | b64dec }} {{ b32enc "hi" }}"#,
                "aGVsbG8= hello NBUQ====",
            ),
            (
                r#"{{ toJson (dict "a" "<b>") }} {{ toRawJson (dict "a" "<b>") }}"#,
                r#"{"a":"\u003cb\u003e"} {"a":"<b>"}"#,
            ),
            (r#"{{ (fromJson "{\"a\": [1, 2]}").a }}"#, "[1 2]"),
            (
                r#"{{ base "/a/b.tar.gz" }} {{ dir "/a/b" }} {{ ext "b.tar.gz" }} {{ clean "/a/../b//c/" }} {{ isAbs "/a" }}"#,
                "b.tar.gz /a .gz /b/c true",
            ),
            (
                r#"{{ typeOf "x" }} {{ kindOf (list) }} {{ typeIs "string" "x" }} {{ deepEqual (list 1) (list 1) }}"#,
                "string slice true true",
            ),
            (
                r#"{{ (urlParse "http://u:p@h:8080/p?q=1#f").host }} {{ urlJoin (dict "scheme" "https" "host" "h" "path" "/x") }}"#,
                "h:8080 https://h/x",
            ),
            (
                r#"{{ duration 95 }} {{ wrap 5 "aaa bbb ccc" }}"#,
                "1m35s aaa\nbbb\nccc",
            ),
            (
                r#"{{ "abc" | nospace }} {{ initials "hello world" }} {{ swapcase "aB" }}"#,
                "abc hw Ab",
            ),
        ];
        for (source, expected) in cases {
            assert_eq!(render(source).as_deref(), Ok(expected), "{source}");
        }
    }

    #[test]
    fn what_sprig_leaves_out_or_wisp_cannot_carry_fails_by_name() {
        // Left out of the hermetic set: not defined at all, as in Tinkerbell.
        for source in [
            r#"{{ env "HOME" }}"#,
            r#"{{ expandenv "$HOME" }}"#,
            r#"{{ now }}"#,
            r#"{{ getHostByName "x" }}"#,
            r#"{{ uuidv4 }}"#,
        ] {
            let err = render(source).unwrap_err();
            assert!(err.contains("undefined function"), "{source}: {err}");
        }
        let err = render(r#"{{ genCA "x" 1 }}"#).unwrap_err();
        assert!(
            err.contains("genCA") && err.contains("not available"),
            "{err}"
        );
        let err = render(r#"{{ fail "no disk" }}"#).unwrap_err();
        assert!(err.contains("no disk"), "{err}");
        let err = render(r#"{{ div 1 0 }}"#).unwrap_err();
        assert!(err.contains("division by zero"), "{err}");
    }
}
