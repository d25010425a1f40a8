//! Concatenation of one-dimensional arrays as the shards send them (text or binary), without
//! decoding their elements: how the per-shard `array_agg(DISTINCT x)` of a group become one
//! array of candidate values, which the final projection then aggregates (`count(DISTINCT …)`
//! over it) with Postgres's own equality.

use bytes::{BufMut, Bytes, BytesMut};

use super::MergeError;

fn bad(detail: &str) -> MergeError {
    MergeError::InvalidValue {
        type_name: "array",
        detail: detail.to_string(),
    }
}

/// The elements of a binary one-dimensional array: element type, whether a NULL is among
/// them, and the element bytes with their length words.
fn binary_parts(b: &[u8]) -> Result<(u32, bool, usize, &[u8]), MergeError> {
    let word = |at: usize| -> Result<i32, MergeError> {
        let s = b.get(at..at + 4).ok_or_else(|| bad("truncated header"))?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let ndim = word(0)?;
    let has_null = word(4)? != 0;
    let elem = word(8)? as u32;
    match ndim {
        0 => Ok((elem, false, 0, &[])),
        1 => {
            let len = usize::try_from(word(12)?).map_err(|_| bad("negative length"))?;
            if word(16)? != 1 {
                return Err(bad("lower bound other than 1"));
            }
            Ok((elem, has_null, len, b.get(20..).unwrap_or(&[])))
        }
        _ => Err(bad("more than one dimension")),
    }
}

/// The arrays' elements in one array, in the given order; `None` when every part is NULL
/// (an `array_agg` over no rows).
pub fn concat(parts: &[Bytes], binary: bool) -> Result<Option<Bytes>, MergeError> {
    if parts.is_empty() {
        return Ok(None);
    }
    if binary {
        let mut elem = None;
        let mut has_null = false;
        let mut count = 0usize;
        let mut body = BytesMut::new();
        for p in parts {
            let (e, n, len, data) = binary_parts(p)?;
            if elem.is_some_and(|x| x != e) {
                return Err(bad("element types differ"));
            }
            elem = Some(e);
            has_null |= n;
            count += len;
            body.put_slice(data);
        }
        let mut out = BytesMut::with_capacity(body.len() + 20);
        let count = i32::try_from(count).map_err(|_| bad("too many elements"))?;
        match elem {
            Some(e) if count > 0 => {
                out.put_i32(1);
                out.put_i32(i32::from(has_null));
                out.put_u32(e);
                out.put_i32(count);
                out.put_i32(1);
                out.put_slice(&body);
            }
            _ => {
                out.put_i32(0);
                out.put_i32(0);
                out.put_u32(elem.unwrap_or(0));
            }
        }
        return Ok(Some(out.freeze()));
    }
    let mut out = Vec::with_capacity(parts.iter().map(Bytes::len).sum::<usize>() + 2);
    out.push(b'{');
    for p in parts {
        let inner = p
            .strip_prefix(b"{")
            .and_then(|x| x.strip_suffix(b"}"))
            .ok_or_else(|| bad("text array without braces or with bounds"))?;
        if inner.is_empty() {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(inner);
    }
    out.push(b'}');
    Ok(Some(Bytes::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(elem: u32, values: &[Option<&[u8]>]) -> Bytes {
        let mut b = BytesMut::new();
        if values.is_empty() {
            b.put_i32(0);
            b.put_i32(0);
            b.put_u32(elem);
            return b.freeze();
        }
        b.put_i32(1);
        b.put_i32(i32::from(values.iter().any(Option::is_none)));
        b.put_u32(elem);
        b.put_i32(values.len() as i32);
        b.put_i32(1);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        b.freeze()
    }

    #[test]
    fn text_arrays_join_their_elements() {
        let parts = [
            Bytes::from_static(b"{1,NULL}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{\"a,b\",3}"),
        ];
        assert_eq!(
            concat(&parts, false).unwrap(),
            Some(Bytes::from_static(b"{1,NULL,\"a,b\",3}"))
        );
        assert_eq!(concat(&[], false).unwrap(), None);
        assert!(concat(&[Bytes::from_static(b"[0:1]={1,2}")], false).is_err());
    }

    #[test]
    fn binary_arrays_join_their_elements() {
        let one: &[u8] = &[0, 0, 0, 1];
        let two: &[u8] = &[0, 0, 0, 2];
        let parts = [
            bin(23, &[Some(one)]),
            bin(23, &[]),
            bin(23, &[None, Some(two)]),
        ];
        assert_eq!(
            concat(&parts, true).unwrap(),
            Some(bin(23, &[Some(one), None, Some(two)]))
        );
        assert!(concat(&[bin(23, &[Some(one)]), bin(20, &[Some(one)])], true).is_err());
        assert!(concat(&[Bytes::from_static(b"\x00\x00")], true).is_err());
    }
}
